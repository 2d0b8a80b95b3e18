"""How long the command line takes to answer --help (target: under 1.5 s each).

Runs `python -m saescope --help` and `saescope <command> --help` for every
command as subprocesses: one warm-up run of each (so the OS file cache holds the
files, as it would for a user who has run saescope before), then `--repeats`
timed runs; prints the median, min and max wall time of each and PASS or FAIL
against the target. Exits 1 when any median is over it.

    python bench/cli_startup.py [--repeats 5] [--target 1.5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def saescope_exe() -> list[str]:
    """The installed `saescope` script beside this Python, else `python -m saescope`."""
    script = Path(sys.executable).parent / "saescope"
    found = str(script) if script.exists() else shutil.which("saescope")
    return [found] if found else [sys.executable, "-m", "saescope"]


def wall_time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per command (default: 5)")
    ap.add_argument("--target", type=float, default=1.5, help="seconds (default: 1.5)")
    args = ap.parse_args()

    from saescope.cli import CUSTOM, STAGES

    exe = saescope_exe()
    cmds = [("python -m saescope --help", [sys.executable, "-m", "saescope", "--help"])]
    cmds += [(f"saescope {name} --help", [*exe, name, "--help"]) for name in [*STAGES, *CUSTOM]]
    print(
        f"{len(cmds)} commands, 1 warm-up + {args.repeats} timed runs each; target {args.target} s"
    )
    print(f"{'command':<32} {'median s':>9} {'min s':>7} {'max s':>7}  result")
    failed = []
    for name, cmd in cmds:
        wall_time(cmd)  # warm-up
        times = [wall_time(cmd) for _ in range(args.repeats)]
        med = statistics.median(times)
        ok = med < args.target
        if not ok:
            failed.append(name)
        print(
            f"{name:<32} {med:>9.3f} {min(times):>7.3f} {max(times):>7.3f}  {'PASS' if ok else 'FAIL'}"
        )
    print(
        f"{'FAIL: ' + ', '.join(failed) if failed else 'PASS'} (every median under {args.target} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
