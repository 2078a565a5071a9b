"""Progress bars for long work: on a terminal only, so that a log file or a pipe gets no redraws."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, enabled: bool = True, **options) -> tqdm:
    """tqdm over `iterable` (or updated by hand), hidden where `enabled` is false or standard error
    is not a terminal (tqdm's disable=None)."""
    return tqdm(iterable, disable=None if enabled else True, **options)
