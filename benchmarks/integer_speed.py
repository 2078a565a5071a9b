"""Encode and decode time of the integer codec against the float codec it replaced, in one run.

The float codec is the previous release's code (a git worktree of `--baseline`, by default the last
commit before the integer network), run by the same Python on the same image with the same thread
count. Both run as the CLI would (`python -m snailcompress.cli encode IMAGE --threads N`, then
`decode`), so each time includes starting Python and loading the model, and each decode checks the
pixels against the file's checksum. Then the integer codec again with its default thread count
while another process keeps one core busy, against the same idle.

    python benchmarks/integer_speed.py --out results/experiments/integer_speed.md
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from snailcompress.bench.scripts import publish, run, run_facts

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT.parent / "shared" / "data" / "kodak" / "kodim23.png"  # held out from training
BASELINE = "955d4cf"  # the float codec, before the integer network


def _time(tree: Path, *args: str) -> float:
    """Wall time of one CLI command run from the source tree `tree` (one line of error on failure)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "snailcompress.cli", *args, "-q", "-f"], env=env, cwd=tree,
                          capture_output=True, text=True)
    if done.returncode:
        raise OSError(f"{' '.join(args[:2])} failed in {tree}: {done.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def _code(tree: Path, work: Path, name: str, threads: int | None) -> tuple[float, float, int]:
    """Encode and decode IMAGE with the tree's CLI: (encode s, decode s, file bytes)."""
    snail, png = work / f"{name}.snail", work / f"{name}.png"
    flags = [] if threads is None else ["--threads", str(threads)]
    encode = _time(tree, "encode", str(IMAGE), "-o", str(snail), *flags)
    decode_flags = [] if threads is None or name.startswith("float") else flags  # the float codec decodes with the file's count
    decode = _time(tree, "decode", str(snail), "-o", str(png), *decode_flags)
    return encode, decode, snail.stat().st_size


def _versus(reference: float, time_s: float) -> str:
    return f"{reference / time_s:.2f}x faster" if time_s <= reference else f"{time_s / reference:.2f}x slower"


def _busy_core() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the float codec [%(default)s]")
    parser.add_argument("--threads", default="1,2", help="thread counts to compare [%(default)s]")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not IMAGE.is_file():
        raise OSError(f"{IMAGE}: not found (the shared Kodak images)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work, baseline = Path(tmp), Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(baseline), args.baseline],
                       check=True, capture_output=True)
        try:
            for threads in (int(t) for t in args.threads.split(",")):
                for codec, tree in (("float", baseline), ("integer", ROOT)):
                    encode, decode, size = _code(tree, work, f"{codec}-{threads}", threads)
                    rows.append((f"{codec} ({args.baseline if codec == 'float' else 'this tree'})", f"{threads}",
                                 "idle", encode, decode, size))
                    print(rows[-1], flush=True)
            idle = _code(ROOT, work, "integer-default", None)
            rows.append(("integer (this tree)", "default", "idle", *idle))
            busy_process = _busy_core()
            try:
                busy = _code(ROOT, work, "integer-busy", None)
            finally:
                busy_process.kill()
            rows.append(("integer (this tree)", "default", "one core busy", *busy))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], capture_output=True)
    floats = {r[1]: r for r in rows if r[0].startswith("float")}
    lines = [
        "# Integer codec against the float codec: encode and decode time",
        "",
        f"`python benchmarks/integer_speed.py{' --out ' + str(args.out) if args.out else ''}`; {run_facts()}.",
        "Image: kodim23.png, 768x512 RGB (held out). Default settings (calibrated, `--context 2`); each time is",
        "the whole CLI command (Python start, model load, coding, checksum), OMP_NUM_THREADS=1 plus `--threads`.",
        "",
        "| codec | threads | machine | encode s | decode s | file bytes | encode vs float | decode vs float |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for codec, threads, machine, encode, decode, size in rows:
        ref = floats.get(threads)
        vs = (_versus(ref[3], encode), _versus(ref[4], decode)) if ref and codec.startswith("integer") else ("", "")
        lines.append(f"| {codec} | {threads} | {machine} | {encode:.1f} | {decode:.1f} | {size:,} | {vs[0]} | {vs[1]} |")
    idle, busy = rows[-2], rows[-1]
    lines += ["", f"One core busy against idle, default thread count: encode {busy[3] / idle[3]:.2f}x, "
              f"decode {busy[4] / idle[4]:.2f}x the idle time."]
    publish(lines, args.out)


if __name__ == "__main__":
    run(main)
