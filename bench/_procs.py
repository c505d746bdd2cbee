"""Child processes for the tunnel benchmark, and what /proc says about them.

Every process a chain needs is started here with its output in a log file, in its own
session (so a stray Ctrl-C reaches only the benchmark), and stopped by its own pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import IO

from nbbridge.demo import free_port as free_port  # the bench scripts take it from here

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:PORT, read from /proc/net/tcp.

    Reading /proc rather than connecting keeps a probe from opening a connection through
    a chain (a websocat client would dial onward for it).
    """
    wanted = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == wanted and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def child_env() -> dict[str, str]:
    """Our environment for a child, minus $NBBRIDGE_TOKEN, with this nbbridge on PYTHONPATH.

    The processes run the nbbridge this script imported, not whatever copy is installed.
    """
    import nbbridge

    env = dict(os.environ)
    env.pop("NBBRIDGE_TOKEN", None)
    here = str(Path(nbbridge.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


class Child:
    """A child process whose output goes to a log file we can wait on."""

    def __init__(
        self, name: str, args: list[str], workdir: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.args = args
        self.log_path = workdir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=env,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _died(self) -> SystemExit:
        tail = self.log_path.read_text(errors="replace")[-3000:]
        return SystemExit(f"{self.name} exited ({self.popen.returncode}):\n{tail}")

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """Wait until TEXT appears in the log; return the line that has it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if text in line:
                    return line
            if self.popen.poll() is not None:
                raise self._died()
            time.sleep(0.05)
        raise SystemExit(f"{self.name}: no {text!r} after {timeout:g} s; see {self.log_path}")

    def wait_listening(self, port: int, timeout: float = 30.0) -> None:
        """Wait until this process (or anyone) listens on 127.0.0.1:PORT."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if listening(port):
                return
            if self.popen.poll() is not None:
                raise self._died()
            time.sleep(0.05)
        raise SystemExit(f"{self.name}: not listening on {port} after {timeout:g} s")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def rss_kib(pid: int) -> int | None:
    """Resident set size (VmRSS) in KiB, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds the process has used (utime + stime from /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ")".
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLK_TCK


def machine() -> dict[str, object]:
    """What the figures depend on: cores, CPU model, kernel, load."""
    import platform

    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "loadavg": list(os.getloadavg()),
    }


def command_version(args: list[str]) -> str | None:
    """The first line a tool prints for its version flag, or None if it cannot be run."""
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies over all cores, from the first line of /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def tcp_counters() -> dict[str, int]:
    """The kernel's TCP extension counters (``TcpExt:`` lines of /proc/net/netstat)."""
    counters: dict[str, int] = {}
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return counters
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            counters.update(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
    return counters


def fd_count(pid: int) -> int | None:
    """Open file descriptors of the process (entries of /proc/PID/fd), or None if gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; children inherit it.

    :returns: (soft before, soft now).
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]
