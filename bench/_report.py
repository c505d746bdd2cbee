"""Turning the benchmark's measurements into one table (text and Markdown) and JSON.

Each row is one figure of one chain: min / median / max over the runs, then the median as a
ratio to the same figure of the reference chains measured in the same run (direct TCP for
speed and latency, websocat for the peer comparison).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

# metric key -> (label, unit format, ratio to direct?, ratio to websocat?)
METRICS: list[tuple[str, str, str, bool, bool]] = [
    ("single_MBps", "single stream, MB/s", "{:.0f}", True, True),
    ("parallel_MBps", "8 streams, MB/s (sum)", "{:.0f}", True, True),
    ("rtt_p50_us", "100 B round trip p50, us", "{:.0f}", True, True),
    ("rtt_p99_us", "100 B round trip p99, us", "{:.0f}", True, True),
    ("open_s", "open {conns} conns at once, s", "{:.3f}", True, True),
    ("listen_overflows", "  accept queue overflows meanwhile", "{:.0f}", False, False),
    ("rss_idle_MiB", "RSS idle, MiB (sum)", "{:.1f}", False, True),
    ("rss_conns_MiB", "RSS {conns} idle conns (run 1), MiB (sum)", "{:.1f}", False, True),
    ("conn_KiB", "memory per idle conn (run 1), KiB (sum)", "{:.1f}", False, True),
    ("rss_after_MiB", "RSS after throughput, MiB (sum)", "{:.1f}", False, True),
    ("rss_drift_pct", "RSS drift first→last run, %", "{:+.1f}", False, False),
    ("machine_cpu_pct", "machine CPU % in single stream", "{:.0f}", False, False),
]
ROLE_METRICS: list[tuple[str, str, str]] = [
    ("rss_idle_MiB", "RSS idle, MiB", "{:.1f}"),
    ("cpu_s_per_GB", "CPU s per GB", "{:.2f}"),
    ("cpu_pct", "CPU % in single stream", "{:.0f}"),
]
ROLES = ("client", "relay", "agent", "nginx", "sink")
REFERENCES = ("direct", "websocat")


def summary(values: Sequence[float | None]) -> tuple[float, float, float] | None:
    got = [v for v in values if v is not None]
    if not got:
        return None
    return min(got), statistics.median(got), max(got)


def _ratio(value: float, ref: tuple[float, float, float] | None) -> str:
    if ref is None or ref[1] == 0:
        return "-"
    return f"x{value / ref[1]:.2f}"


def rows(results: dict[str, Any], titles: dict[str, str], conns: int) -> list[list[str]]:
    """The table as rows of cells; the first row is the header."""
    out = [["figure", "chain", "min", "median", "max", "vs direct", "vs websocat"]]
    chains = list(results)

    def row(
        label: str,
        chain: str,
        values: Sequence[float | None],
        fmt: str,
        refs: dict[str, tuple[float, float, float] | None],
    ) -> None:
        s = summary(values)
        if s is None:
            return
        cells = [label, titles.get(chain, chain), *(fmt.format(v) for v in s)]
        for ref_name in REFERENCES:
            if ref_name in refs and ref_name != chain:
                cells.append(_ratio(s[1], refs[ref_name]))
            else:
                cells.append("")
        out.append(cells)

    for key, label, fmt, vs_direct, vs_ws in METRICS:
        label = label.format(conns=conns)
        refs: dict[str, tuple[float, float, float] | None] = {}
        if vs_direct and "direct" in results:
            refs["direct"] = summary(results["direct"]["metrics"].get(key, []))
        if vs_ws and "websocat" in results:
            refs["websocat"] = summary(results["websocat"]["metrics"].get(key, []))
        first = True
        for chain in chains:
            values = results[chain]["metrics"].get(key, [])
            before = len(out)
            row(label if first else "", chain, values, fmt, refs)
            first = first and len(out) == before
    for key, label, fmt in ROLE_METRICS:
        for role in ROLES:
            ref = None
            if "websocat" in results:
                ref = summary(results["websocat"]["roles"].get(role, {}).get(key, []))
            first = True
            for chain in chains:
                values = results[chain]["roles"].get(role, {}).get(key, [])
                before = len(out)
                row(f"{label} [{role}]" if first else "", chain, values, fmt, {"websocat": ref})
                first = first and len(out) == before
    return out


def text_table(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = []
    for n, r in enumerate(table):
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(table[0]) + " |"]
    lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(table[0]) - 2)) + "|")
    for r in table[1:]:
        lines.append("| " + " | ".join(r) + " |")
    return "\n".join(lines)


def profile_markdown(profiles: dict[str, Any]) -> str:
    """Per process: CPU share during the profiled run and the top functions by self time."""
    parts = []
    for role, p in profiles.items():
        parts.append(
            f"**{role}**: CPU {_pct(p.get('cpu_pct'))} of a core (/proc); reactor thread "
            f"sampled working {p['working_pct']:.0f} %, waiting in epoll {p['waiting_pct']:.0f} "
            f"% ({p['samples']} samples at {p['rate']} Hz over {p['duration_s']} s)\n"
        )
        parts.append("| self % of work | function | file |")
        parts.append("|---:|---|---|")
        for f in p["top"]:
            parts.append(f"| {f['self_pct']:.1f} | `{f['function']}` | {f['file']} |")
        parts.append("")
    return "\n".join(parts)


def profile_text(profiles: dict[str, Any]) -> str:
    parts = []
    for role, p in profiles.items():
        parts.append(
            f"{role}: CPU {_pct(p.get('cpu_pct'))} of a core; sampled working "
            f"{p['working_pct']:.0f} %, waiting {p['waiting_pct']:.0f} %; "
            "top functions by self time (% of working samples):"
        )
        for f in p["top"]:
            parts.append(f"  {f['self_pct']:5.1f}  {f['function']}  ({f['file']})")
    return "\n".join(parts)


def _pct(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f} %"
