"""What one link's set-up costs each process in CPU: relay, agent, and the honest client.

    PYTHONPATH=src .venv/bin/python bench/setup_cost.py [--links 100] [--concurrency 10]
                                                        [--rounds 10]

Starts bench/load.py's chain (relay, agent, client under ``_probe.py``) and runs
``_honest.py`` twice, one set-up round and then 1 + ROUNDS rounds of LINKS links
(CONCURRENCY opening at a time, a fraction of a second of traffic), taking each process's CPU
over each: the difference between the two runs, over ROUNDS x LINKS, is the CPU of one
link's set-up (and teardown), without the client's start-up. No flood: this is what the
honest set-ups of bench/load.py ask of the two shared cores by themselves, beside the
wall-clock time of the rounds.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import load
from _procs import child_env, cpu_seconds

ROLES = ("relay", "agent")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_honest(chain: load.LoadChain, args: argparse.Namespace, rounds: int) -> dict[str, float]:
    """CPU seconds of the relay, the agent and the honest client over one _honest.py run."""
    command = load.honest_command(chain, args.links, args.concurrency, 0.2, rounds)
    before = {r: cpu_seconds(chain.pids[r]) or 0.0 for r in ROLES}
    client0, wall0 = children_cpu(), time.monotonic()
    out = subprocess.run(command, env=child_env(), capture_output=True, text=True, check=True)
    spent = {r: (cpu_seconds(chain.pids[r]) or 0.0) - before[r] for r in ROLES}
    spent["client"] = children_cpu() - client0
    spent["wall"] = time.monotonic() - wall0
    result = json.loads([ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1])
    if "error" in result:
        raise SystemExit(f"_honest.py failed:\n{result['error']}")
    spent["setup_all_s"] = result["setup_all_s"]
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with load.running_chain("nbbridge-setup-") as chain:
        run_honest(chain, args, 1)  # warm-up
        one = run_honest(chain, args, 1)
        many = run_honest(chain, args, 1 + args.rounds)
    links = args.rounds * args.links
    per_link = {k: 1e6 * (many[k] - one[k]) / links for k in (*ROLES, "client")}
    busy = sum(many[k] - one[k] for k in (*ROLES, "client"))
    setting_up = many["setup_all_s"] - one["setup_all_s"]
    print(
        f"{links} link set-ups ({args.concurrency} at a time): CPU per link "
        + ", ".join(f"{k} {v:.0f} us" for k, v in per_link.items())
        + f"; all three {sum(per_link.values()):.0f} us"
    )
    if setting_up > 0:
        print(
            f"set-up rounds {setting_up:.2f} s: {links / setting_up:.0f} links/s; the three "
            f"processes busy {100 * busy / setting_up / 2:.0f} % of two cores meanwhile "
            "(their teardown and the traffic's included)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
