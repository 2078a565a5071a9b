"""What every script under benchmarks/ shares: its report shown and written under results/ whole or
not at all, headed by the machine it ran on, its errors said in one line, and the rows of a long one
kept so that it can go on after a stop."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from ..errors import SnailError
from ..fileio import atomic_write
from ..threads import threads
from .harness import machine_facts


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
    count = threads()
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {machine_facts()['cpu']}, "
            f"{count} thread{'' if count == 1 else 's'}, torch {torch.__version__}")


#: a line in a result file under which its reading, written by hand, follows: `publish` keeps that
#: part when the script remakes the file (whoever remakes it checks it against the new numbers)
BY_HAND = "<!-- written by hand: kept when the script remakes this file; check it against the numbers above -->"


def publish(lines: list[str], out: Path | None, show: bool = True) -> None:
    """Print the Markdown report (unless not `show`: a report rewritten as it grows) and, if `out` is
    given, replace that file with it atomically, keeping what the old one held under BY_HAND."""
    text = "\n".join(lines) + "\n"
    if show:
        print(text)
    if out is not None:
        old = out.read_text() if out.is_file() else ""
        if BY_HAND in old:
            text += "\n" + old[old.index(BY_HAND):]
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, text.encode(), overwrite=True)


class PartialRows:
    """The rows of a long report kept as they are measured (`OUT.partial.jsonl` beside the report),
    so that a run stopped part-way, by a session's end, goes on where it stopped when run again.

    Kept rows are reused only when `fingerprint` (the command, the model, ...) and the machine (CPU,
    torch threads, torch version, added here) are the same as when they were measured: times taken
    on another CPU do not belong in one table. `publish` the report first, then `done()` removes the
    file. Without `out` nothing is kept."""

    def __init__(self, out: Path | None, fingerprint: dict):
        facts = machine_facts()
        self.fingerprint = {**fingerprint, "cpu": facts["cpu"], "threads": facts["torch_threads"], "torch": facts["torch"]}
        self.path = None if out is None else out.with_name(out.name + ".partial.jsonl")
        self.rows: dict[str, dict] = {}
        self.resumed = 0  # rows measured by an earlier, stopped run
        records = []
        if self.path is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:  # the last line, cut short by the stop
                    break
        if records and records[0] == {"fingerprint": self.fingerprint}:
            self.rows = {r["key"]: r["row"] for r in records[1:]}
            self.resumed = len(self.rows)
            if self.rows:
                print(f"going on from {self.path}: {len(self.rows)} row(s) kept", file=sys.stderr)

    def note(self) -> str:
        """What a report's header should say when some of its rows come from a stopped run."""
        return (f" {self.resumed} row(s) were measured by an earlier run on the same CPU that was stopped"
                " part-way (snailcompress/bench/scripts.py, PartialRows)." if self.resumed else "")

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def add(self, key: str, row: dict) -> None:
        """Keep one measured row. This run's first row writes the file afresh, atomically (the
        fingerprint and every kept row): a run that fails before measuring anything leaves no file,
        and a line cut short by the last stop is not followed by good ones a load would never reach."""
        first = len(self.rows) == self.resumed
        self.rows[key] = row
        if self.path is None:
            return
        if first:
            records = [{"fingerprint": self.fingerprint}] + [{"key": k, "row": r} for k, r in self.rows.items()]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in records).encode(), overwrite=True)
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"key": key, "row": row}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def done(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
