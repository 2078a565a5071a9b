"""Processes started by torchrun: the process group, each rank's device, and a split's shares.

`train` trains with DDP; `eval` and `bench` split a test split among the processes and gather exact
totals. torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; with WORLD_SIZE > 1 `start` joins the process
group (nccl where the processes run on CUDA GPUs, gloo on the CPU), and each rank runs on
cuda:LOCAL_RANK where the device is auto or cuda and there is a GPU.

Sharded evaluation gives every rank a contiguous run of whole batches (`batch_share`): batch k is
images [k*B, (k+1)*B) whatever the number of processes, so every image is scored in the same batch,
by the same computation, as in a single process. `gather` puts the per-image values (float64) of
every rank back in image order on every rank; the total is `math.fsum` of them, exactly rounded and
independent of the order. So 2 or 8 processes give the same per-image values and the same total, to
the last bit, as one process on the same kind of device.

Training's decisions that hang on a clock (stop, save) are taken by every rank at the same step
(`any_rank`), as a rank that left the loop alone would wait forever for the others' next collective.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["launch_rank", "start", "device_for", "rank_world", "batch_share", "share", "gather", "any_rank",
           "sum_over_ranks", "gather_objects", "finish"]


def _uses_cuda(option: str) -> bool:
    return torch.cuda.is_available() and (option == "auto" or option.startswith("cuda"))


def launch_rank() -> int:
    """This process's rank as torchrun numbered it (0 outside torchrun): known before the process group
    is joined, and after it is left."""
    return int(os.environ.get("RANK", "0"))


def start(device_option: str = "auto") -> tuple[int, int, int]:
    """(rank, world size, local rank) of this process, joining torchrun's process group where
    WORLD_SIZE > 1 (nccl where the device is a CUDA GPU, else gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        if _uses_cuda(device_option):
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return launch_rank(), world, local_rank


def device_for(option: str, local_rank: int = 0) -> torch.device:
    """--device for this rank: cuda:LOCAL_RANK for auto or a bare cuda where there is a GPU, else as
    api.resolve_device reads it (UsageError for a device that is not here)."""
    if option in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    from .api import resolve_device

    return torch.device(resolve_device(option))


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_share(n: int, batch_size: int, rank: int, world: int) -> range:
    """The images of `rank`'s share of n: a contiguous run of whole batches of `batch_size` (the last
    batch may be short, as in one process), the batches dealt out as evenly as they go."""
    batches = -(-n // batch_size)
    first, last = batches * rank // world, batches * (rank + 1) // world
    return range(min(n, first * batch_size), min(n, last * batch_size))


def share(n: int, rank: int, world: int) -> range:
    """`rank`'s contiguous share of n items, as even as it goes."""
    return batch_share(n, 1, rank, world)


def gather(values: np.ndarray) -> np.ndarray:
    """Every rank's float64 `values` (1-D, any length) concatenated in rank order, on every rank: with
    shares in rank order, the per-image values of the whole split in image order. Without a process
    group, `values` as they are."""
    values = np.asarray(values, np.float64)
    _, world = rank_world()
    if world == 1:
        return values
    device = _collective_device()
    lengths = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(lengths, torch.tensor([len(values)], dtype=torch.int64, device=device))
    lengths = [int(t.item()) for t in lengths]
    padded = torch.zeros(max(lengths), dtype=torch.float64, device=device)
    padded[: len(values)] = torch.from_numpy(values).to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return np.concatenate([part[:length].cpu().numpy() for part, length in zip(parts, lengths)])


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on any rank, on every rank: a decision all of them take at the same step."""
    if rank_world()[1] == 1:
        return flag
    decided = torch.tensor([float(flag)], device=_collective_device())
    dist.all_reduce(decided, op=dist.ReduceOp.MAX)
    return bool(decided.item())


def sum_over_ranks(*values: float) -> list[float]:
    """Each of `values` summed over the ranks (in float64), on every rank."""
    if rank_world()[1] == 1:
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return total.tolist()


def gather_objects(value) -> list:
    """Every rank's `value` (small, picklable), in rank order, on every rank."""
    _, world = rank_world()
    if world == 1:
        return [value]
    values = [None] * world
    dist.all_gather_object(values, value)
    return values


def _collective_device() -> torch.device:
    """Where the process group's tensors must be: this rank's GPU under nccl, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def finish() -> None:
    """Leave the process group, if this process joined one. No barrier: in `bench` rank 0 goes on
    coding and running the codecs alone, for longer than a collective may wait."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
