"""Token files: read from a file only its owner can access, else refused with the fix to run."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from nbbridge._secrets import SecretError, read_secret


class TokenFileModeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.patch(os, "environ", {})
        self.path = self.mktemp()
        with open(self.path, "w") as f:
            f.write("s3cret-token\n")

    def read(self, mode: int, what: str = "token") -> str:
        os.chmod(self.path, mode)
        return read_secret(self.path, "NBBRIDGE_TOKEN", what)

    def test_private_modes_are_accepted(self) -> None:
        for mode in (0o600, 0o400):
            with self.subTest(mode=oct(mode)):
                self.assertEqual(self.read(mode), "s3cret-token")

    def test_group_or_other_access_is_refused(self) -> None:
        """0640 and 0660 too: a token the group can read is shared with the whole group."""
        for mode, who in [
            (0o640, "its group"),
            (0o660, "its group"),
            (0o620, "its group"),
            (0o644, "everyone"),
            (0o604, "everyone"),
        ]:
            for what in ("token", "admin token"):
                with self.subTest(mode=oct(mode), what=what):
                    with self.assertRaises(SecretError) as caught:
                        self.read(mode, what)
                    self.assertEqual(
                        str(caught.exception),
                        f"{what} file {self.path} is too open: {who} may access it "
                        f"(mode {mode:04o}); run: chmod 600 {self.path}",
                    )

    def test_refusal_never_shows_the_secret(self) -> None:
        with self.assertRaises(SecretError) as caught:
            self.read(0o640)
        self.assertNotIn("s3cret", str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))

    def test_systemd_credentials_directory_is_trusted(self) -> None:
        """systemd's LoadCredential= files are private by means mode bits do not show."""
        os.chmod(self.path, 0o640)
        self.patch(os, "environ", {"CREDENTIALS_DIRECTORY": os.path.dirname(self.path)})
        self.assertEqual(read_secret(self.path, "NBBRIDGE_TOKEN"), "s3cret-token")
