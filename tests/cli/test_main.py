"""The `nbbridge` admin command, run in-process and once as a real subprocess."""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import nbbridge
from nbbridge.cli import main
from nbbridge.crypto import PrivateKey, load_private_key, parse_public_key, write_private_key


class Run:
    """The outcome of one in-process run."""

    def __init__(self, status: int, stdout: str, stderr: str) -> None:
        self.status, self.stdout, self.stderr = status, stdout, stderr


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.key_path = str(self.dir / "agent.key")

    def run_main(self, *argv: str) -> Run:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        try:
            status = main(list(argv))
        except SystemExit as e:  # argparse usage errors
            status = int(e.code or 0)
        return Run(status, out.getvalue(), err.getvalue())

    def assertOneLineError(self, run: Run, fragment: str) -> None:
        self.assertEqual(run.status, 2)
        self.assertEqual(run.stdout, "")
        lines = run.stderr.splitlines()
        self.assertEqual(len(lines), 1, run.stderr)
        self.assertTrue(lines[0].startswith("nbbridge: "), lines[0])
        self.assertIn(fragment, lines[0])
        self.assertNotIn("Traceback", run.stderr)

    def test_keygen(self) -> None:
        run = self.run_main("keygen", self.key_path)
        self.assertEqual(run.status, 0)
        token = run.stdout
        self.assertTrue(token.endswith("\n"))
        self.assertEqual(len(token.splitlines()), 1)
        public = parse_public_key(token)
        self.assertEqual(load_private_key(self.key_path).public_key, public)
        self.assertEqual(stat.S_IMODE(os.stat(self.key_path).st_mode), 0o600)
        self.assertIn("nbbridge pubkey", run.stderr)
        self.assertNotIn(token.strip(), run.stderr)

    def test_keygen_refuses_existing(self) -> None:
        self.assertEqual(self.run_main("keygen", self.key_path).status, 0)
        before = load_private_key(self.key_path)
        run = self.run_main("keygen", self.key_path)
        self.assertOneLineError(run, f"{self.key_path} already exists")
        self.assertIn("--force", run.stderr)
        self.assertEqual(load_private_key(self.key_path), before)

    def test_keygen_force(self) -> None:
        self.assertEqual(self.run_main("keygen", self.key_path).status, 0)
        before = load_private_key(self.key_path)
        run = self.run_main("keygen", "--force", self.key_path)
        self.assertEqual(run.status, 0)
        after = load_private_key(self.key_path)
        self.assertNotEqual(after, before)
        self.assertEqual(parse_public_key(run.stdout), after.public_key)

    def test_keygen_bad_directory(self) -> None:
        run = self.run_main("keygen", str(self.dir / "missing" / "k"))
        self.assertOneLineError(run, "No such file or directory")

    def test_pubkey(self) -> None:
        key = PrivateKey.generate()
        write_private_key(self.key_path, key)
        run = self.run_main("pubkey", self.key_path)
        self.assertEqual(run.status, 0)
        self.assertEqual(run.stdout, key.public_key.to_text() + "\n")
        self.assertEqual(run.stderr, "")

    def test_pubkey_missing(self) -> None:
        self.assertOneLineError(self.run_main("pubkey", self.key_path), "No such file or directory")

    def test_pubkey_too_open(self) -> None:
        write_private_key(self.key_path, PrivateKey.generate())
        os.chmod(self.key_path, 0o644)
        self.assertOneLineError(
            self.run_main("pubkey", self.key_path),
            f"permissions 0644 on {self.key_path} are too open; run chmod 600 {self.key_path}",
        )

    def test_pubkey_malformed(self) -> None:
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"nbbridge-private-key-v1\nnot base64!\n")
        os.close(fd)
        self.assertOneLineError(self.run_main("pubkey", self.key_path), "malformed")

    def test_pubkey_of_directory(self) -> None:
        self.assertOneLineError(self.run_main("pubkey", str(self.dir)), "not a regular file")

    def test_token(self) -> None:
        run = self.run_main("token")
        self.assertEqual(run.status, 0)
        token, line = run.stdout.splitlines()
        self.assertRegex(token, r"^[A-Za-z0-9_-]{43}$")
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        self.assertEqual(line, f'token_sha256 = "{digest}"')
        self.assertNotEqual(self.run_main("token").stdout.splitlines()[0], token)

    def test_usage_errors(self) -> None:
        for argv in ([], ["frobnicate"], ["keygen"], ["pubkey", "a", "b"]):
            with self.subTest(argv=argv):
                run = self.run_main(*argv)
                self.assertEqual(run.status, 2)
                self.assertNotIn("Traceback", run.stderr)

    def test_help(self) -> None:
        run = self.run_main("--help")
        self.assertEqual(run.status, 0)
        for command in ("keygen", "pubkey", "token"):
            self.assertIn(command, run.stdout)


class SubprocessTests(SynchronousTestCase):
    """`python -m nbbridge.cli` as a real process, the way a shell runs it."""

    def test_keygen_then_pubkey(self) -> None:
        directory = Path(self.mktemp())
        directory.mkdir()
        key_path = str(directory / "client.key")
        src = str(Path(nbbridge.__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))

        def run(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "nbbridge.cli", *argv],
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
                check=False,
            )

        made = run("keygen", key_path)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertRegex(made.stdout, re.compile(r"^nbb1[a-z2-7]{58}\n$"))
        shown = run("pubkey", key_path)
        self.assertEqual((shown.returncode, shown.stdout), (0, made.stdout))
        again = run("keygen", key_path)
        self.assertEqual(again.returncode, 2)
        self.assertEqual(len(again.stderr.splitlines()), 1)
        self.assertTrue(again.stderr.startswith("nbbridge: "))
        self.assertNotIn("Traceback", again.stderr)
