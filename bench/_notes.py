"""The notes under the benchmark's table: checks, the issue's targets, and the Markdown page.

``notes`` turns the measurements into one-line findings (source/sink check, which process
worked hardest, each target of issue 4 met or missed); ``markdown`` renders the generated
part of bench/RESULTS.md, which ``write_markdown`` replaces between its markers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import _report

PHASES = {"stream": "one more single stream", "round_trips": "100-byte round trips"}
BEGIN, END = "<!-- bench/tunnel.py:begin -->", "<!-- bench/tunnel.py:end -->"


def write_markdown(path: Path, block: str) -> None:
    """Replace the generated block of PATH (between the markers), keeping the rest."""
    generated = f"{BEGIN}\n{block.rstrip()}\n{END}"
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + generated + tail
    else:
        text = (
            (old.rstrip() + "\n\n" if old.strip() else "# Tunnel benchmark\n\n") + generated + "\n"
        )
    path.write_text(text)


def notes(results: dict[str, Any], settings: str, info: dict[str, Any]) -> list[str]:
    """One line each; SETTINGS says what one run did."""
    out = [
        f"{settings}; MB = 10^6 bytes, GB = 10^9; took {info['seconds']:.0f} s; load average "
        f"{info['machine']['loadavg'][0]:.2f} at start, {info['machine']['loadavg_end'][0]:.2f} "
        "at end",
    ]
    direct = _report.summary(results.get("direct", {}).get("metrics", {}).get("single_MBps", []))
    others = [
        _report.summary(r["metrics"].get("single_MBps", []))
        for n, r in results.items()
        if n != "direct"
    ]
    best = max((o[1] for o in others if o), default=None)
    if direct and best:
        sink = _report.summary(results["direct"]["roles"].get("sink", {}).get("cpu_pct", []))
        out.append(
            f"source/sink check: direct single stream is x{direct[1] / best:.1f} the fastest "
            f"chain" + (f", with the sink process at {sink[1]:.0f} % of a core" if sink else "")
        )
    out += _bottleneck(results)
    out += _targets(results)
    for name, why in info["skipped"].items():
        out.append(f"skipped {name}: {why}")
    for name, r in results.items():
        for e in r["errors"]:
            out.append(f"error in {name}: {e}")
    return out


def _bottleneck(results: dict[str, Any]) -> list[str]:
    """Which process of each nbbridge chain worked hardest in the single stream."""
    out = []
    for name in ("nbbridge", "nginx"):
        r = results.get(name)
        if r is None:
            continue
        busy = {}
        for role in ("client", "relay", "agent", "nginx"):
            s = _report.summary(r["roles"].get(role, {}).get("cpu_pct", []))
            if s:
                busy[role] = s[1]
        machine_pct = _report.summary(r["metrics"].get("machine_cpu_pct", []))
        if not busy:
            continue
        top = max(busy, key=lambda k: busy[k])
        saturated = "saturated" if busy[top] >= 90 else "none of them saturated"
        out.append(
            f"bottleneck check ({name}): busiest process in the single stream is the {top} at "
            f"{busy[top]:.0f} % of a core ({saturated})"
            + (f"; all cores {machine_pct[1]:.0f} % busy" if machine_pct else "")
        )
    return out


def _targets(results: dict[str, Any]) -> list[str]:
    """The issue's targets for the nbbridge chain, each with its median and met / missed."""
    if "nbbridge" not in results:
        return []

    def med(chain: str, key: str, role: str | None = None) -> float | None:
        r = results.get(chain)
        if r is None:
            return None
        values = r["roles"].get(role, {}).get(key, []) if role else r["metrics"].get(key, [])
        s = _report.summary(values)
        return s[1] if s else None

    out = []

    def check(text: str, value: float | None, ok: bool | None, shown: str) -> None:
        if value is None or ok is None:
            return
        out.append(f"target: {text}: {shown} - {'met' if ok else 'MISSED'}")

    ws = "websocat" in results
    for key, what, op, factor in (
        ("single_MBps", "single stream", ">=", 1.6),
        ("parallel_MBps", "8 streams", ">=", 1.6),
        ("rtt_p50_us", "round trip p50", "<=", 1.5),
        ("rtt_p99_us", "p99", "<=", 2.0),
    ):
        nb, ref = med("nbbridge", key), med("websocat", key)
        if ws and nb and ref:
            ok = nb / ref >= factor if op == ">=" else nb / ref <= factor
            check(f"{what} {op} {factor}x websocat", nb, ok, f"x{nb / ref:.2f}")
    opened = med("nbbridge", "open_s")
    check(
        "open 1000 connections <= 1 s",
        opened,
        opened is not None and opened <= 1.0,
        f"{opened or 0:.2f} s",
    )
    per_conn = med("nbbridge", "conn_KiB")
    check(
        "memory per idle connection <= 8 KiB",
        per_conn,
        per_conn is not None and per_conn <= 8,
        f"{per_conn or 0:.1f} KiB",
    )
    drift = med("nbbridge", "rss_drift_pct")
    check(
        "RSS flat (+-5 %) over the runs",
        drift,
        drift is not None and abs(drift) <= 5,
        f"{drift or 0:+.1f} %",
    )
    cpu = {r: med("nbbridge", "cpu_s_per_GB", r) for r in ("client", "relay", "agent")}
    if all(v is not None for v in cpu.values()):
        smallest = min(cpu, key=lambda r: cpu[r] or 0)
        check(
            "relay CPU per GB the smallest of the three",
            cpu["relay"],
            smallest == "relay",
            ", ".join(f"{r} {v:.2f} s/GB" for r, v in cpu.items()),
        )
    return out


def markdown(
    info: dict[str, Any], table: list[list[str]], notes: list[str], profile: dict[str, Any] | None
) -> str:
    m, v = info["machine"], info["versions"]
    lines = [
        f"Generated by `{info['command']}` on {info['started']}.",
        "",
        f"Machine: {m['nproc']} x {m['cpu_model']}, Linux {m['kernel']}; "
        f"Python {v['python']}, Twisted {v['twisted']}, Autobahn {v['autobahn']} "
        f"(NVX {'on' if v['autobahn_nvx'] else 'off'}), cryptography {v['cryptography']}; "
        f"{v['websocat'] or 'no websocat'}; {v['nginx'] or 'no nginx'}. nbbridge "
        f"{v['nbbridge']} from `{v['nbbridge_path']}` (git {v['git'] or '?'}).",
        "",
        _report.markdown_table(table),
        "",
        *(f"* {n}" for n in notes),
    ]
    for phase, p in (profile or {}).items():
        lines += [
            "",
            f"#### Profile of nbbridge during {PHASES[phase]} under py-spy ({p['figure']})",
            "",
            _report.profile_markdown(p["processes"]),
        ]
    return "\n".join(lines)
