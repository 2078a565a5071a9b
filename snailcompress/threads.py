"""How many CPU threads coding uses (--threads): the compiled kernels' threads, and torch's where it
is imported. The CPU's coding path does not import torch, so the count is kept here; torch, if a
command imports it later (eval, bench, a GPU), starts with it too (OMP_NUM_THREADS, which torch
reads when it first runs)."""

from __future__ import annotations

import os
import sys

_count: int | None = None


def set_threads(count: int) -> None:
    global _count
    _count = count
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(count)
    else:
        os.environ["OMP_NUM_THREADS"] = str(count)


def threads() -> int:
    """The count set (set_threads); else torch's where it is imported, else every CPU this process may use."""
    if _count is not None:
        return _count
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
