"""Single process or DDP under ``torchrun``, behind one small interface.

``torchrun --nproc_per_node N -m sedm.cli train-diffusion ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
without them the trainer runs as one process (CPU or one GPU) and every helper here is a no-op.
NCCL is used on GPUs, gloo on CPU (the tests run 2 CPU processes with gloo). ``SEDM_DIST_BACKEND=gloo``
forces gloo on GPUs too: for clusters whose NCCL is broken, and for several ranks sharing one GPU
(NCCL refuses two ranks on one device), which is how DDP on CUDA is tested on a one-GPU machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sedm.errors import InputError
from sedm.runtime.devices import resolve_device


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; otherwise describe the single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(None, "--gpus", f"rank {rank} wants {dev} but {torch.cuda.device_count()} CUDA device(s) are "
                         f"visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
                         "ask for at most as many GPUs as the node has, or set diffusion.device to cuda:0 and "
                         "SEDM_DIST_BACKEND=gloo to put all ranks on one GPU")
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = os.environ.get("SEDM_DIST_BACKEND") or ("nccl" if dev.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend)
    return DistInfo(rank, world, local_rank, dev)


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world
    return value


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is true on any (so all ranks stop at the same step)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
