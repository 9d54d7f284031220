"""Where the work runs: device choice, the distributed (torchrun) context, and Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, then Apple's MPS, then the CPU."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"--device {name!r} is not a device: auto, cpu, cuda, cuda:1 "
                             "or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but no CUDA GPU is visible")
        if device.type == "mps" and not mps_available():
            raise ValueError("--device mps was asked for, but this machine or PyTorch build "
                             "has no Apple MPS backend")
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)  # what later CUDA calls without a device mean
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def exact_cuda_math(device: torch.device) -> None:
    """Scores computed on a GPU must match the CPU's, on which the thresholds were
    calibrated: TF32 convolutions (on by default on Ampere and newer) keep about 10
    mantissa bits, enough to move a score that lies near the threshold. Scoring
    turns them off; training keeps the speed."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


@contextmanager
def interrupt_deferred() -> Iterator[None]:
    """Ctrl-C inside the block takes effect when the block ends, so work that must not
    be split (writing a record and counting it) is done whole or not at all. Outside
    the main thread, where Python delivers no signal, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


#: How long a rank waits for the others at a collective. Rank 0 validates and saves
#: alone while the others wait at a barrier; at scale (hundreds of thousands of photos)
#: that outlasts NCCL's default of 10 minutes, whose watchdog would end the job.
PROCESS_GROUP_TIMEOUT = timedelta(hours=4)


@dataclass
class Distributed:
    """The process's place in a torchrun job (a single process when not under torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)

    def start(self, device_name: str) -> torch.device:
        """Join the process group (NCCL on GPUs, gloo on CPUs) and pick this rank's device."""
        device = pick_device(device_name)
        if not self.enabled:
            return device
        if device.type not in ("cuda", "cpu"):
            raise ValueError(f"torchrun trains on CUDA GPUs or on CPUs, not {device.type}: "
                             "give --device cuda or --device cpu")
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=PROCESS_GROUP_TIMEOUT)
        return device

    def any_rank(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on any: a decision each rank makes
        from its own clock (``--max-minutes``) must be taken by all together, or one
        rank leaves the loop while another still waits on a gradient all-reduce."""
        if not self.enabled:
            return flag
        shared = torch.tensor([int(flag)], device=device)
        dist.all_reduce(shared, op=dist.ReduceOp.MAX)
        return bool(shared.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def stop(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
