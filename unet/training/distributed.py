"""Training in several processes with DistributedDataParallel, started by torchrun.

A step asked for `nproc` > 1 processes re-launches itself under torchrun (`launch`); each process
torchrun starts calls `init` to join the process group and learn its rank. Only the main
process (rank 0) logs and writes checkpoints (`is_main`); metrics are summed or gathered over
all processes first (`sum_over_ranks`, `gather_over_ranks`) so it logs global values.

Several machines: torchrun reads its rendezvous settings from the environment (`PET_NNODES`,
`PET_NODE_RANK`, `PET_MASTER_ADDR`, `PET_MASTER_PORT`, or `PET_RDZV_*`); when any is set the
launch joins that rendezvous instead of starting a one-machine (`--standalone`) one.

Outside torchrun every helper here behaves as for one process of rank 0, so the training loop
runs the same code either way.
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.distributed as dist
from torch import nn

from unet.errors import UserError

MULTI_NODE_VARS = ("PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_RDZV_ENDPOINT")


def launched() -> bool:
    """True in a process torchrun started (it sets RANK and WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(nproc: int, module: str, env: dict[str, str]) -> int:
    """Runs `python -m module` in `nproc` processes on this machine under torchrun, with `env`
    added to the environment (pass inputs there: torchrun would take arguments such as
    `--nproc` for abbreviations of its own options); returns torchrun's exit status.

    On the CPU the cores are shared out (OMP_NUM_THREADS) so the processes don't oversubscribe
    them; a value the user set wins.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    if not any(os.environ.get(name) for name in MULTI_NODE_VARS):
        cmd.append("--standalone")     # one machine: a private rendezvous on a free port
    cores = len(os.sched_getaffinity(0))
    env = {"OMP_NUM_THREADS": str(max(1, cores // nproc)), **os.environ, **env}
    return subprocess.run([*cmd, "-m", module], env=env).returncode


def init(device_type: str) -> None:
    """Joins the process group torchrun set up: nccl between GPUs (one per process, by local
    rank), gloo between CPU processes. Does nothing outside torchrun."""
    if not launched() or dist.is_initialized():
        return
    if device_type == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")


def finish() -> None:
    """Leaves the process group (if any), so the processes exit cleanly."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """The one process that logs to MLflow and writes checkpoints."""
    return rank() == 0


def device() -> str | None:
    """This process's device: its own GPU under torchrun, else None (the default choice)."""
    return f"cuda:{local_rank()}" if launched() and torch.cuda.is_available() else None


def wrap(model: nn.Module, sync_bn: bool) -> nn.Module:
    """The model to train: DistributedDataParallel (gradients averaged over the processes), with
    BatchNorm statistics over the global batch if sync_bn. One process: the model itself.

    Its parameters are `model`'s, so `model` keeps serving state dicts and inference.
    """
    if not dist.is_initialized():
        return model
    if sync_bn:
        if next(model.parameters()).device.type != "cuda":
            raise UserError("parameter sync_bn=true needs CUDA GPUs (torch syncs BatchNorm on "
                            "GPUs only); use sync_bn=false on the CPU")
        # The converted layers share model's parameters and buffers.
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    device_ids = [local_rank()] if next(model.parameters()).is_cuda else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def shard(dataset) -> torch.utils.data.Dataset:
    """This process's share of an evaluation set: every world_size-th item, each item in exactly
    one share (DistributedSampler would repeat items to even the shares out, scoring them
    twice)."""
    if not dist.is_initialized():
        return dataset
    return torch.utils.data.Subset(dataset, range(rank(), len(dataset), world_size()))


def sum_over_ranks(*values: float) -> list[float]:
    """Each value summed over all processes (float64, on the process group's device)."""
    if not dist.is_initialized():
        return list(values)
    device = f"cuda:{local_rank()}" if dist.get_backend() == "nccl" else "cpu"
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def average_buffers(tensors: list[torch.Tensor]) -> None:
    """Replaces each tensor, in place, by its mean over all processes (e.g. BatchNorm
    statistics each process computed on its own share of the data)."""
    if not dist.is_initialized():
        return
    for tensor in tensors:
        dist.all_reduce(tensor)
        tensor /= world_size()


def gather_over_ranks(rows: torch.Tensor) -> torch.Tensor:
    """Every process's rows (N_i, ...) concatenated along dim 0 (a CPU tensor); shares may
    differ in length."""
    if not dist.is_initialized():
        return rows
    shares = [None] * world_size()
    dist.all_gather_object(shares, rows.cpu())
    return torch.cat(shares)
