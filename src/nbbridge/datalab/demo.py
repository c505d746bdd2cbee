"""`make datalab-demo`: a datalab daemon on loopback, a signed CSV upload, the view URL.

Starts ``twistd -n nbbridge-datalab`` (a real process) with a fresh sign key in a temporary
directory, uploads a small CSV exactly as a front-end would (``POST /datalab/start`` signed
with ``X-SIGN``), and prints the URL that opens JupyterLab on that file. Runs until Ctrl-C
(or SIGTERM), then stops the daemon, which stops the instance. ``--check`` also fetches the
CSV back through ``/datalab/static`` and stops (used by the tests).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
#: What the demo prints before the URL to open; the tests wait for this line.
OPEN_PROMPT = "open in a browser:"
CSV = b"city,temp_c\nOslo,4\nLima,19\nCairo,27\nHanoi,31\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sign(key: str, ts: str, name: str) -> str:
    """X-SIGN: lowercase hex sha256 of the UTF-8 of key + ts + name."""
    return hashlib.sha256((key + ts + name).encode("utf-8")).hexdigest()


def upload(base: str, key: str, name: str, body: bytes) -> str:
    """What a front-end does: a signed POST /datalab/start; the nonce."""
    ts = str(int(time.time()))
    query = urllib.parse.urlencode({"ts": ts, "filename": name})
    request = urllib.request.Request(
        f"{base}/datalab/start?{query}",
        data=body,
        method="POST",
        headers={"X-SIGN": sign(key, ts, name), "Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = json.load(response)
    if answer.get("code") != "OK":
        raise RuntimeError(f"datalab refused the upload: {answer}")
    return str(answer["result"]["nonce"])


def wait_listening(port: int, daemon: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError("the datalab daemon exited at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the datalab daemon did not listen within {timeout:g} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fetch the CSV back, then stop")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: free)")
    args = parser.parse_args(argv)

    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    with tempfile.TemporaryDirectory(prefix="nbbridge-datalab-demo-") as tmp:
        key = secrets.token_urlsafe(32)
        port = args.port or free_port()
        env = dict(os.environ, NBBRIDGE_DATALAB_SIGN_KEY=key)
        log = open(Path(tmp) / "datalab.log", "wb")  # noqa: SIM115 - closed below
        daemon = subprocess.Popen(
            [
                str(BIN / "twistd"),
                "-n",
                "--pidfile=",
                "nbbridge-datalab",
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                "--work-dir",
                str(Path(tmp) / "work"),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_listening(port, daemon)
            base = f"http://127.0.0.1:{port}"
            nonce = upload(base, key, "weather.csv", CSV)
            print("datalab: uploaded weather.csv, got a nonce", flush=True)
            if args.check:
                with urllib.request.urlopen(
                    f"{base}/datalab/static/{nonce}/weather.csv", timeout=60
                ) as response:
                    if response.read() != CSV:
                        raise RuntimeError("static returned something else")
                print("datalab: /datalab/static returned the CSV", flush=True)
            print(OPEN_PROMPT, flush=True)
            print(f"  {base}/datalab/view/{nonce}/lab/tree/weather.csv", flush=True)
            if not args.check:
                print("(Ctrl-C stops the datalab and its instance)", flush=True)
                while not stop["now"] and daemon.poll() is None:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        except Exception as e:
            print(f"datalab demo failed: {e}", file=sys.stderr)
            log.flush()
            sys.stderr.write((Path(tmp) / "datalab.log").read_text(errors="replace")[-3000:])
            return 1
        finally:
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    daemon.wait(60)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    daemon.wait()
            log.close()
    print("datalab demo stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
