"""What every benchmark script does with its report: show it, and write it under results/ whole or not at all."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import torch

from snailcompress.bench.harness import machine_facts
from snailcompress.fileio import atomic_write


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
