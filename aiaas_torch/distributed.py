"""torchrun support of `train`: joining and leaving the process group, and each epoch's row order shared by the ranks.

Launched under `torchrun` (WORLD_SIZE > 1) `train` trains with DistributedDataParallel: gloo on CPU, nccl on CUDA.
Every rank reads the data set, draws the same epoch permutation (`epoch_order`), and takes every world-th row of each
global batch; losses are weighted so that the averaged gradient is the global batch's mean. A distributed run's steps
are therefore exactly a single-process run's with the same seed and batch size, for any number of rows and any batch
size (up to float summation order).
"""

from __future__ import annotations

import os

import torch
from torch import distributed as dist


def epoch_order(n: int, shuffle: bool, seed: int) -> torch.Tensor:
    """Return the row order of one epoch: a permutation drawn from `seed` (the same on every rank), or 0..n-1."""
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator()
    g.manual_seed(seed)
    return torch.randperm(n, generator=g)


def setup_distributed(device: str) -> tuple[int, int, str | None, torch.device]:
    """Return (rank, world size, backend, device), joining the process group when launched under torchrun;
    `device`: TrainConfig.device ("cpu", "cuda" or "auto")."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if world <= 1:
        return 0, 1, None, torch.device("cuda" if want_cuda else "cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if want_cuda else "gloo"
    device = torch.device(f"cuda:{local_rank}") if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), backend, device


def finish_distributed() -> None:
    """Wait for every rank (rank 0 may still be writing) and leave the process group; returns None."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
