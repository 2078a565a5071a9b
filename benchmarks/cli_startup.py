"""How long commands take before they code: the commands that code nothing (`--help`, `models`,
`info FILE`), and the start-up of `encode` and `decode`, measured on an 8x8 crop of the shipped
kodim23 crop (coded by the model, in a few milliseconds), beside importing torch alone (which a
coding command on the CPU does not do, a calibration's fit included).

Each command runs 5 times as a user would run it (a new Python each time, the compiled kernels and
lookup tables already cached, as after the first command); the median wall time, with --threads 2.
And the first encode and decode after installing, once each: numba compiles the kernels (into an
empty cache of their own here, NUMBA_CACHE_DIR) and keeps them for every later command.

    python benchmarks/cli_startup.py --out results/cli_startup.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from snailcompress.bench.scripts import publish, run, run_facts

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "rgb-odd.snail"
CROP = ROOT / "snailcompress" / "assets" / "kodim23-crop.png"


def _median_seconds(args: list[str], times: int = 5, module: list[str] | None = None, env: dict | None = None) -> float:
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        subprocess.run([sys.executable, *(module or ["-m", "snailcompress.cli"]), *args], check=True, capture_output=True, cwd=ROOT,
                       env=env)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


_COMPILE_FIT = """
import time
import numpy as np
from snailcompress.codec.calibration_objective import calibrated_nll
start = time.perf_counter()
calibrated_nll(np.ones((4, 8)), np.ones((30, 8)), np.zeros(30), np.zeros(30), np.zeros(30), np.zeros(8),
               np.zeros((4, 3)), 3, gradient=True)
print(time.perf_counter() - start)
"""


def _first_fit_compile_seconds(env: dict) -> float:
    """The calibration's objective (calibration_objective.calibrated_nll) compiled into `env`'s kernel cache, as the first
    encode of a plane large enough for a calibration compiles it (the 8x8 crop's encode does not)."""
    done = subprocess.run([sys.executable, "-c", _COMPILE_FIT], check=True, capture_output=True, text=True, cwd=ROOT, env=env)
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lines = [
        "# Commands before they code: how long they take to answer, and what a coding command spends first",
        "",
        f"`python benchmarks/cli_startup.py{' --out ' + str(args.out) if args.out else ''}`; {run_facts()}. Median of 5 runs, each a new Python "
        "(the compiled kernels and lookup tables cached, as after a first command). The 8x8 crop's coding takes a few "
        "milliseconds, so its commands' times are what any `encode` or `decode` spends before coding: importing numba "
        "and the kernels, and reading the model with numpy. Coding on the CPU does not import torch, a calibration's "
        "fit included (an RGB image of 420x420 or more is fitted one; the 8x8 crop is not). The last "
        "two rows ran once each, as after installing: numba compiles the kernels (into an empty cache, "
        "NUMBA_CACHE_DIR; the lookup tables' cache kept) and keeps them for every later command.",
        "",
        "| command | seconds |",
        "|---|---|",
    ]

    def row(label: str, seconds: float) -> None:
        lines.append(f"| {label} | {seconds:.2f} |")
        print(lines[-1], flush=True)

    for command in (["--help"], ["encode", "--help"], ["info", str(GOLDEN.relative_to(ROOT))], ["models"]):
        row(f"`snailcompress {' '.join(command)}`", _median_seconds(command))
    row("`python -c 'import torch'` (torch alone)", _median_seconds([], module=["-c", "import torch"]))
    with tempfile.TemporaryDirectory() as work:
        image, coded = Path(work) / "tiny.png", Path(work) / "tiny.snail"
        Image.open(CROP).convert("RGB").crop((0, 0, 8, 8)).save(image)
        encode = ["encode", "--threads", "2", "-f", "-q", str(image), "-o", str(coded)]
        decode = ["decode", "--threads", "2", "-f", "-q", str(coded), "-o", str(Path(work) / "back.png")]
        _median_seconds(encode, times=1)  # the first run fills the caches
        row("`snailcompress encode` of an 8x8 photo crop", _median_seconds(encode))
        row("`snailcompress decode` of its file", _median_seconds(decode))
        fresh = {**os.environ, "NUMBA_CACHE_DIR": str(Path(work) / "kernels")}  # as after installing: nothing compiled
        row("the first `snailcompress encode` after installing (the kernels compiled), once", _median_seconds(encode, 1, env=fresh))
        row("the first `snailcompress decode` after it, once", _median_seconds(decode, 1, env=fresh))
        row("what the first encode of a plane fitted a calibration adds: its objective's kernel compiled, once",
            _first_fit_compile_seconds(fresh))
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
