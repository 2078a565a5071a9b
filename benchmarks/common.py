"""What every benchmark script shares: its report shown and written under results/ whole or not at
all, and its errors said in one line."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from snailcompress.bench.harness import machine_facts
from snailcompress.errors import SnailError
from snailcompress.fileio import atomic_write


def run(main: Callable[[], None]) -> None:
    """Run a script's main(): what snailcompress refuses (a --model that is not a model, a missing data
    set) ends it with one line and the CLI's exit code, and a file it cannot read (the shared images
    missing) with one line and exit code 1, not a traceback."""
    try:
        main()
    except (SnailError, OSError) as e:
        print(f"{Path(sys.argv[0]).name}: error: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 1))


def run_facts() -> str:
    """When, on which CPU, with how many threads and which torch: what a timing depends on.

    This project's sessions get different CPUs, so a report's times mean something only beside its CPU."""
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine_facts()['cpu']}, "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")


def publish(lines: list[str], out: Path | None) -> None:
    """Print the Markdown report and, if `out` is given, replace that file with it atomically."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, text.encode(), overwrite=True)
