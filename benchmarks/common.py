"""What every benchmark script does with its report: show it, and write it under results/ whole or not at all."""

from __future__ import annotations

from pathlib import Path

from snailcompress.fileio import atomic_write


def publish(lines: list[str], out: Path | None) -> None:
    """Print the Markdown report and, if `out` is given, replace that file with it atomically."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, text.encode(), overwrite=True)
