"""``twistd -n nbbridge-datalab`` as a real process: options, the demo, a clean stop."""

from __future__ import annotations

import os
import shutil
import sys
import time
import urllib.parse

import treq
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool

from nbbridge.datalab import tap
from tests._ports import free_port
from tests._tools import skip_unavailable, unavailable
from tests.deploy._units import REPO, exec_start, read_unit
from tests.deploy.test_systemd import INSTALLED_TWISTD
from tests.tunnel._jupyter import missing_jupyter
from tests.tunnel._process import child_env, spawn, twistd_command

from ._harness import CSV, SIGN_KEY, sign


class OptionTests(SynchronousTestCase):
    def parse(self, *args: str, env_key: str | None = "k") -> tap.Options:
        saved = os.environ.get(tap.SIGN_KEY_ENV)
        if env_key is None:
            os.environ.pop(tap.SIGN_KEY_ENV, None)
        else:
            os.environ[tap.SIGN_KEY_ENV] = env_key
        try:
            options = tap.Options()
            options.parseOptions(list(args))
            return options
        finally:
            if saved is None:
                os.environ.pop(tap.SIGN_KEY_ENV, None)
            else:
                os.environ[tap.SIGN_KEY_ENV] = saved

    def test_defaults(self) -> None:
        options = self.parse()
        self.assertEqual(options["listen"], "tcp:8890:interface=127.0.0.1")
        self.assertEqual(options["sign_key"], b"k")
        self.assertEqual(options["nonce-ttl"], 600)
        self.assertEqual(options["launcher"], "subprocess")
        self.assertEqual(options["store"], "memory")

    def test_flags(self) -> None:
        options = self.parse(
            "--listen", "9000", "--nonce-ttl", "60", "--max-instances", "3",
            "--idle-timeout", "120", "--store", "memory", "--launcher", "subprocess",
        )  # fmt: skip
        self.assertEqual(options["listen"], "tcp:9000:interface=127.0.0.1")
        self.assertEqual(
            (options["nonce-ttl"], options["max-instances"], options["idle-timeout"]),
            (60, 3, 120),
        )

    def test_key_file_wins_and_must_be_private(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("from-file\n")
        os.chmod(path, 0o600)
        self.assertEqual(self.parse("--sign-key-file", path)["sign_key"], b"from-file")
        os.chmod(path, 0o644)
        with self.assertRaises(SystemExit) as e:
            self.parse("--sign-key-file", path)
        self.assertIn("too open", str(e.exception))

    def test_no_key(self) -> None:
        with self.assertRaises(SystemExit) as e:
            self.parse(env_key=None)
        self.assertIn(tap.SIGN_KEY_ENV, str(e.exception))

    def test_refusals(self) -> None:
        for args in (
            ["--launcher", "docker"],
            ["--nonce-ttl", "0"],
            ["--max-instances", "x"],
            ["--store", "redis://:secret@db:6379/0"],
        ):
            with self.assertRaises(usage.UsageError) as e:
                self.parse(*args)
            self.assertNotIn("secret", str(e.exception))


class DaemonTests(TestCase):
    timeout = 240
    skip = unavailable(missing_jupyter())

    async def test_demo(self) -> None:
        """`make datalab-demo --check`: twistd, env key, signed upload, static, clean stop."""
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "nbbridge.datalab.demo", "--check"],
            env=child_env(),
            reactor=reactor,
        )
        text = out.decode() + err.decode()
        self.assertEqual(code, 0, text)
        self.assertIn("/datalab/static returned the CSV", text)
        self.assertRegex(text, r"http://127\.0\.0\.1:\d+/datalab/view/[\w-]{43}/lab/tree/")

    async def test_sigterm_leaves_no_instance(self) -> None:
        """The daemon stopped by SIGTERM stops its instances and removes their directories."""
        root = os.path.abspath(self.mktemp())
        os.makedirs(root)
        key = os.path.join(root, "key")
        with open(key, "w") as f:
            f.write(SIGN_KEY + "\n")
        os.chmod(key, 0o600)
        work = os.path.join(root, "work")
        port = free_port()
        argv = twistd_command(
            "nbbridge-datalab",
            ["--listen", f"tcp:{port}:interface=127.0.0.1", "--sign-key-file", key,
             "--work-dir", work],
        )  # fmt: skip
        daemon = spawn(self, "datalab", argv, child_env())
        await daemon.wait_for("nbbridge datalab listening on")
        ts = str(int(time.time()))
        query = urllib.parse.urlencode({"ts": ts, "filename": "w.csv"})
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.post(
            f"http://127.0.0.1:{port}/datalab/start?{query}",
            data=CSV,
            headers={"X-SIGN": sign(ts, "w.csv")},
            pool=pool,
        )
        self.assertEqual((await treq.json_content(response))["code"], "OK")
        [instance_dir] = [d for d in os.listdir(work) if d.startswith("i-")]
        instance_dir = os.path.join(work, instance_dir)
        pids = processes_in(os.path.join(instance_dir, "files"))
        self.assertTrue(pids, "no jupyter-server found running in the instance directory")
        await daemon.stop()
        self.assertIn("no instance left", daemon.tail())
        self.assertFalse(os.path.exists(instance_dir))
        self.assertEqual([p for p in pids if os.path.exists(f"/proc/{p}")], [])


def processes_in(directory: str) -> list[int]:
    """Processes whose working directory is DIRECTORY."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/cwd") == directory:
                    found.append(int(name))
            except OSError:
                pass
    return found


class SystemdUnitTests(TestCase):
    """systemd/nbbridge-datalab.service: systemd accepts it; its command line parses."""

    UNIT = REPO / "systemd" / "nbbridge-datalab.service"

    def test_command_line_parses(self) -> None:
        unit = read_unit(self.UNIT)
        argv = exec_start(unit)
        self.assertEqual(
            argv[:4], [INSTALLED_TWISTD, "--nodaemon", "--pidfile=", "nbbridge-datalab"]
        )
        credentials = os.path.abspath(self.mktemp())
        os.makedirs(credentials)
        [load] = unit["Service"]["LoadCredential"]
        name, source = load.split(":", 1)
        self.assertTrue(source.startswith("/etc/nbbridge/"))
        with open(os.path.join(credentials, name), "w") as f:
            f.write("key\n")
        os.chmod(os.path.join(credentials, name), 0o600)
        args = [a.replace("%d", credentials) for a in argv[4:]]
        self.assertIn(f"{credentials}/{name}", args)
        options = tap.Options()
        options.parseOptions(args)
        self.assertEqual(options["listen"], "tcp:8890:interface=127.0.0.1")
        self.assertEqual(options["sign_key"], b"key")
        self.assertEqual(unit["Service"]["KillMode"], ["control-group"])

    async def test_systemd_analyze_verify(self) -> None:
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            skip_unavailable("systemd-analyze not found: apt-get install systemd (.ci/run does)")
        local_twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        copy = os.path.join(directory, self.UNIT.name)
        with open(copy, "w") as f:
            f.write(self.UNIT.read_text().replace(INSTALLED_TWISTD, local_twistd))
        out, err, code = await getProcessOutputAndValue(analyze, ["verify", copy])
        output = (out + err).decode("utf-8", "replace")
        self.assertEqual(code, 0, output)
        complaints = [
            line
            for line in output.splitlines()
            if self.UNIT.name in line
            and any(w in line.lower() for w in ("unknown", "ignoring", "invalid", "bad "))
        ]
        self.assertEqual(complaints, [], output)
