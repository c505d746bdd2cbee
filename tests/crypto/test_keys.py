"""Keys, their text form, private key files and authorized keys files."""

from __future__ import annotations

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from nbbridge.crypto import (
    PRIVATE_KEY_HEADER,
    AuthorizedKeys,
    KeyFileError,
    KeyFormatError,
    PrivateKey,
    PublicKey,
    load_authorized_keys,
    load_private_key,
    parse_authorized_keys,
    parse_public_key,
    private_key_text,
    write_private_key,
)

B32 = "abcdefghijklmnopqrstuvwxyz234567"


class PublicKeyTextTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.key = PrivateKey.generate().public_key
        self.text = self.key.to_text()

    def test_round_trip(self) -> None:
        self.assertTrue(self.text.startswith("nbb1"))
        self.assertEqual(len(self.text), 62)
        self.assertEqual(self.text, self.text.lower())
        self.assertNotIn("=", self.text)
        self.assertEqual(parse_public_key(self.text), self.key)
        self.assertEqual(str(self.key), self.text)

    def test_known_encoding(self) -> None:
        """The format is a contract: pin it with a fixed key."""
        key = PublicKey(bytes(range(32)))
        self.assertEqual(
            key.to_text(), "nbb1aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dyprpjc5la"
        )

    def test_whitespace_and_case(self) -> None:
        self.assertEqual(parse_public_key(f"  {self.text}\n"), self.key)
        self.assertEqual(parse_public_key(self.text.upper()), self.key)

    def test_every_one_char_typo_is_caught(self) -> None:
        for position in range(4, len(self.text)):
            for replacement in B32:
                if replacement == self.text[position]:
                    continue
                typo = self.text[:position] + replacement + self.text[position + 1 :]
                with self.assertRaises(KeyFormatError) as caught:
                    parse_public_key(typo)
                self.assertEqual(str(caught.exception), "bad checksum: typo in key?")

    def test_swapped_characters_are_caught(self) -> None:
        for position in range(4, len(self.text) - 1):
            a, b = self.text[position], self.text[position + 1]
            if a == b:
                continue
            swapped = self.text[:position] + b + a + self.text[position + 2 :]
            self.assertRaises(KeyFormatError, parse_public_key, swapped)

    def test_wrong_prefix(self) -> None:
        with self.assertRaises(KeyFormatError) as caught:
            parse_public_key("abc1" + self.text[4:])
        self.assertIn("not an nbbridge public key (must start with nbb1)", str(caught.exception))

    def test_private_key_pasted(self) -> None:
        text = private_key_text(PrivateKey.generate())
        with self.assertRaises(KeyFormatError) as caught:
            parse_public_key(text)
        self.assertIn("this is a private key, not a public key", str(caught.exception))

    def test_wrong_length(self) -> None:
        for text in (self.text[:-1], self.text + "a", self.text + self.text):
            with self.assertRaises(KeyFormatError) as caught:
                parse_public_key(text)
            self.assertIn("wrong length", str(caught.exception))

    def test_bad_character(self) -> None:
        with self.assertRaises(KeyFormatError) as caught:
            parse_public_key(self.text[:10] + "1" + self.text[11:])
        self.assertIn("invalid character '1' at position 11", str(caught.exception))

    def test_empty(self) -> None:
        with self.assertRaises(KeyFormatError) as caught:
            parse_public_key("   ")
        self.assertEqual(str(caught.exception), "empty public key")

    def test_raw_length_validated(self) -> None:
        self.assertRaises(ValueError, PublicKey, b"short")
        self.assertRaises(ValueError, PrivateKey, bytes(31))


class PrivateKeyTests(SynchronousTestCase):
    def test_repr_hides_secret(self) -> None:
        key = PrivateKey.generate()
        text = repr(key)
        self.assertNotIn(key.private_bytes().hex(), text)
        self.assertNotIn(private_key_text(key).splitlines()[1], text)
        self.assertIn(key.public_key.to_text(), text)
        self.assertIn("<secret>", text)

    def test_equality(self) -> None:
        key = PrivateKey.generate()
        self.assertEqual(key, PrivateKey(key.private_bytes()))
        self.assertNotEqual(key, PrivateKey.generate())
        self.assertEqual(hash(key), hash(PrivateKey(key.private_bytes())))

    def test_public_key_is_x25519(self) -> None:
        key = PrivateKey.generate()
        self.assertEqual(key.public_key.raw, key.to_x25519().public_key().public_bytes_raw())


class PrivateKeyFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.mkdir(self.dir)
        self.path = os.path.join(self.dir, "agent.key")
        self.key = PrivateKey.generate()

    def mode(self) -> int:
        return stat.S_IMODE(os.stat(self.path).st_mode)

    def test_round_trip_and_mode(self) -> None:
        old = os.umask(0)
        try:
            write_private_key(self.path, self.key)
        finally:
            os.umask(old)
        self.assertEqual(self.mode(), 0o600)
        self.assertEqual(load_private_key(self.path), self.key)
        with open(self.path) as f:
            lines = f.read().split("\n")
        self.assertEqual(lines[0], PRIVATE_KEY_HEADER)
        self.assertEqual(lines[2], "")

    def test_refuses_to_overwrite(self) -> None:
        write_private_key(self.path, self.key)
        with self.assertRaises(KeyFileError) as caught:
            write_private_key(self.path, PrivateKey.generate())
        self.assertIn("already exists", str(caught.exception))
        self.assertEqual(load_private_key(self.path), self.key)

    def test_force_replaces(self) -> None:
        with open(self.path, "w") as f:
            f.write("old")
        os.chmod(self.path, 0o644)
        write_private_key(self.path, self.key, force=True)
        self.assertEqual(self.mode(), 0o600)
        self.assertEqual(load_private_key(self.path), self.key)
        self.assertEqual(os.listdir(self.dir), ["agent.key"])

    def test_missing_directory(self) -> None:
        path = os.path.join(self.dir, "nope", "k")
        for force in (False, True):
            with self.assertRaises(KeyFileError) as caught:
                write_private_key(path, self.key, force=force)
            self.assertIn("No such file or directory", str(caught.exception))

    def test_too_open(self) -> None:
        write_private_key(self.path, self.key)
        for mode in (0o644, 0o640, 0o604, 0o660, 0o602):
            os.chmod(self.path, mode)
            with self.assertRaises(KeyFileError) as caught:
                load_private_key(self.path)
            self.assertEqual(
                str(caught.exception),
                f"permissions {mode:04o} on {self.path} are too open; run chmod 600 {self.path}",
            )
        os.chmod(self.path, 0o400)
        self.assertEqual(load_private_key(self.path), self.key)

    def test_missing(self) -> None:
        with self.assertRaises(KeyFileError) as caught:
            load_private_key(self.path)
        self.assertEqual(
            str(caught.exception), f"cannot read private key {self.path}: No such file or directory"
        )

    def test_directory(self) -> None:
        with self.assertRaises(KeyFileError) as caught:
            load_private_key(self.dir)
        self.assertIn("not a regular file", str(caught.exception))

    def test_unreadable(self) -> None:
        if os.geteuid() == 0:
            raise self.skipTest("root can read any file")
        write_private_key(self.path, self.key)
        os.chmod(self.path, 0)
        self.addCleanup(os.chmod, self.path, 0o600)
        with self.assertRaises(KeyFileError) as caught:
            load_private_key(self.path)
        self.assertIn("Permission denied", str(caught.exception))

    def _write(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def _error(self) -> str:
        with self.assertRaises(KeyFileError) as caught:
            load_private_key(self.path)
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        return message

    def test_malformed(self) -> None:
        good = private_key_text(self.key)
        encoded = good.splitlines()[1]
        cases = {
            "": "is not an nbbridge private key",
            "hello\n": "is not an nbbridge private key",
            self.key.public_key.to_text() + "\n": "holds a public key, not a private key",
            f"{PRIVATE_KEY_HEADER}\n": "expected 2 lines",
            f"{PRIVATE_KEY_HEADER}\n{encoded[:-3]}\n": "line 2 must be 32 bytes in base64url",
            f"{PRIVATE_KEY_HEADER}\n{encoded}x\n": "line 2 must be 32 bytes in base64url",
            f"{PRIVATE_KEY_HEADER}\n!{encoded[1:]}\n": "line 2 must be 32 bytes in base64url",
            f"{PRIVATE_KEY_HEADER}\n{encoded}\nextra\n": "expected 2 lines",
        }
        for text, expected in cases.items():
            with self.subTest(text=text):
                self._write(text)
                self.assertIn(expected, self._error())
        self._write(b"\xff\xfe")
        self.assertIn("not text", self._error())
        self._write(b"x" * 5000)
        self.assertIn("far too long", self._error())

    def test_lenient_whitespace_and_padding(self) -> None:
        encoded = private_key_text(self.key).splitlines()[1]
        self._write(f"{PRIVATE_KEY_HEADER}\r\n  {encoded.rstrip('=')}  \r\n\n")
        self.assertEqual(load_private_key(self.path), self.key)


class AuthorizedKeysTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.alice = PrivateKey.generate().public_key
        self.bob = PrivateKey.generate().public_key
        self.carol = PrivateKey.generate().public_key

    def test_parse(self) -> None:
        text = (
            "# clients allowed to reach this agent\n"
            "\n"
            f"{self.alice}   alice's laptop  \n"
            f"   {self.bob}\n"
            "   # indented comment\n"
            f"{self.carol}\tdatalab front\n"
            f"{self.alice} duplicate\n"
        )
        keys = parse_authorized_keys(text)
        self.assertEqual(len(keys), 3)
        self.assertEqual(list(keys), [self.alice, self.bob, self.carol])
        self.assertIn(self.alice, keys)
        self.assertEqual(keys.label_for(self.alice), "alice's laptop")
        self.assertIsNone(keys.label_for(self.bob))
        self.assertEqual(keys.label_for(self.carol), "datalab front")
        stranger = PrivateKey.generate().public_key
        self.assertNotIn(stranger, keys)
        self.assertIsNone(keys.label_for(stranger))

    def test_empty(self) -> None:
        self.assertEqual(len(parse_authorized_keys("# nobody yet\n")), 0)

    def test_load_errors_name_file_and_line(self) -> None:
        path = self.mktemp()
        typo = str(self.bob)[:-1] + ("a" if str(self.bob)[-1] != "a" else "b")
        with open(path, "w") as f:
            f.write(f"# header\n{self.alice} ok\n\n{typo} bob\n")
        with self.assertRaises(KeyFileError) as caught:
            load_authorized_keys(path)
        self.assertEqual(str(caught.exception), f"{path}, line 4: bad checksum: typo in key?")

    def test_load(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(f"{self.alice} alice\n")
        keys = load_authorized_keys(path)
        self.assertEqual(keys, AuthorizedKeys.from_keys([(self.alice, "alice")]))

    def test_load_missing(self) -> None:
        path = self.mktemp()
        with self.assertRaises(KeyFileError) as caught:
            load_authorized_keys(path)
        self.assertEqual(
            str(caught.exception), f"cannot read authorized keys {path}: No such file or directory"
        )

    def test_load_not_utf8(self) -> None:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"\xff\n")
        with self.assertRaises(KeyFileError) as caught:
            load_authorized_keys(path)
        self.assertIn("not UTF-8", str(caught.exception))

    def write_authorized(self, directory_mode: int, file_mode: int = 0o644) -> str:
        directory = self.mktemp()
        os.mkdir(directory)
        path = os.path.join(directory, "authorized_keys")
        with open(path, "w") as f:
            f.write(f"{self.alice} alice\n")
        os.chmod(path, file_mode)
        os.chmod(directory, directory_mode)
        self.addCleanup(os.chmod, directory, 0o700)
        return path

    def assertRefused(self, path: str, message: str) -> None:
        with self.assertRaises(KeyFileError) as caught:
            load_authorized_keys(path)
        self.assertEqual(str(caught.exception), message)

    def test_private_enough_modes_are_accepted(self) -> None:
        for directory_mode, file_mode in [(0o755, 0o644), (0o700, 0o600), (0o775, 0o664)]:
            with self.subTest(directory=oct(directory_mode), file=oct(file_mode)):
                path = self.write_authorized(directory_mode, file_mode)
                self.assertIn(self.alice, load_authorized_keys(path))

    def test_world_writable_file_is_refused(self) -> None:
        """Anyone who can edit the list can let themselves in."""
        path = self.write_authorized(0o755, 0o666)
        self.assertRefused(
            path,
            f"authorized keys {path} is writable by everyone (mode 0666); run: chmod o-w {path}",
        )

    def test_world_writable_directory_is_refused(self) -> None:
        """Anyone who can write the directory can replace the file."""
        path = self.write_authorized(0o777)
        directory = os.path.abspath(os.path.dirname(path))
        self.assertRefused(
            path,
            f"authorized keys {path} is in {directory}, which everyone may write (mode 0777), "
            f"so anyone could replace the file; run: chmod o-w {directory}",
        )

    def test_sticky_shared_directory_is_refused_with_a_move(self) -> None:
        """/tmp-like directories must stay writable: the advice is to move the file."""
        path = self.write_authorized(0o1777)
        self.assertRefused(
            path,
            f"authorized keys {path} is in {os.path.abspath(os.path.dirname(path))}, "
            "which everyone may write "
            "(mode 1777), so anyone could replace the file; "
            "move the file to a directory only its owner can write",
        )

    def test_symlink_in_world_writable_directory_is_refused(self) -> None:
        target = self.write_authorized(0o755)
        shared = self.mktemp()
        os.mkdir(shared)
        link = os.path.join(shared, "authorized_keys")
        os.symlink(os.path.abspath(target), link)
        os.chmod(shared, 0o777)
        self.addCleanup(os.chmod, shared, 0o700)
        with self.assertRaises(KeyFileError) as caught:
            load_authorized_keys(link)
        self.assertIn(
            f"is in {os.path.abspath(shared)}, which everyone may write", str(caught.exception)
        )

    def test_systemd_credentials_directory_is_trusted(self) -> None:
        path = self.write_authorized(0o777, 0o666)
        self.patch(os, "environ", {"CREDENTIALS_DIRECTORY": os.path.dirname(path)})
        self.assertIn(self.alice, load_authorized_keys(path))

    def test_from_keys(self) -> None:
        keys = AuthorizedKeys.from_keys([self.alice, (self.bob, "bob")])
        self.assertIn(self.alice, keys)
        self.assertEqual(keys.label_for(self.bob), "bob")
        self.assertNotIn("not a key", keys)
