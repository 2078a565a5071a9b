"""How long the commands that do no coding take to answer: `--help`, `models`, `info FILE`.

Each command runs 5 times as a user would run it (a new Python each time); the median wall time.

    python benchmarks/cli_startup.py --out results/cli_startup.md
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from snailcompress.bench.scripts import publish, run, run_facts

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "rgb-odd.snail"


def _median_seconds(args: list[str], times: int = 5) -> float:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "snailcompress.cli", *args], check=True, capture_output=True, cwd=ROOT)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lines = [
        "# Commands that do no coding: how long they take to answer",
        "",
        f"`python benchmarks/cli_startup.py{' --out ' + str(args.out) if args.out else ''}`; {run_facts()}. Median of 5 runs, each a new Python.",
        "",
        "| command | seconds |",
        "|---|---|",
    ]
    for command in (["--help"], ["encode", "--help"], ["info", str(GOLDEN.relative_to(ROOT))], ["models"]):
        lines.append(f"| `snailcompress {' '.join(command)}` | {_median_seconds(command):.2f} |")
        print(lines[-1], flush=True)
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
