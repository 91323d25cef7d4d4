"""This process's place among torchrun's: joining the group, sharing out items, gathering rows.

    ranks = Ranks.from_env("cpu")            # under torchrun: gloo on CPU, nccl on CUDA
    mine = ranks.shard(items)                # each rank its share (all of them under TP)
    rows = ranks.gather(my_rows)             # every rank's rows, on rank 0

Without torchrun (WORLD_SIZE unset or 1) this is rank 0 of 1 and nothing is initialised.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def check_torchrun(device_type: str = "cuda") -> None:
    """ValueError unless this process runs under torchrun (its environment variables) and
    `device_type` is "cuda" or "cpu"."""
    if device_type not in ("cuda", "cpu"):
        raise ValueError(f"device_type must be 'cuda' or 'cpu', got {device_type!r}")
    missing = [name for name in _TORCHRUN_ENV if name not in os.environ]
    if missing:
        raise ValueError(
            f"distributed mode needs torchrun (environment variables {missing} are not set); "
            "run e.g. `torchrun --nproc-per-node 2 ...`"
        )


def init_distributed(device_type: str = "cuda") -> tuple[str | None, torch.device]:
    """Initialise torch.distributed from torchrun's environment (FMS's `--distributed`).

    Returns the strategy name for `load_model` / `get_model` ("tp"; None for a single process)
    and this rank's device (`cuda:LOCAL_RANK`, or the CPU). NCCL on CUDA, gloo on the CPU.
    """
    check_torchrun(device_type)
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device(device_type, local_rank) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return ("tp" if dist.get_world_size() > 1 else None), device


@dataclass
class Ranks:
    """This process's place among `torchrun`'s (rank 0 of 1 without it)."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    sharded_model: bool = False  # tensor parallel: every rank runs every clip, rank 0 writes

    @classmethod
    def from_env(cls, device_type: str) -> "Ranks":
        """Under torchrun (WORLD_SIZE > 1), join its process group (gloo on CPU, nccl on CUDA:
        `init_distributed`); else rank 0 of 1."""
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return cls(device=device_type)
        _, device = init_distributed(device_type)
        return cls(dist.get_rank(), dist.get_world_size(), str(device))

    @classmethod
    def tensor_parallel(cls, device_type: str) -> "Ranks":
        """Join torchrun's group for a model sharded over all its ranks (`--distributed`)."""
        _, device = init_distributed(device_type)
        return cls(dist.get_rank(), dist.get_world_size(), str(device), sharded_model=True)

    @staticmethod
    def local_device(device_type: str) -> str:
        """This process's device: `cuda:LOCAL_RANK` under torchrun on CUDA."""
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if device_type == "cuda" else "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        if self.sharded_model:
            return list(items)
        return list(items[self.rank :: self.world])

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, rows: list) -> list:
        """Every rank's list, concatenated in rank order, on rank 0 ([] elsewhere); with a
        sharded model every rank made the same rows, so rank 0 keeps its own."""
        if self.world == 1:
            return rows
        if self.sharded_model:
            return rows if self.main else []
        out = [None] * self.world if self.main else None
        dist.gather_object(rows, out, dst=0)
        return [row for part in out for row in part] if self.main else []

    def max(self, n: int) -> int:
        if self.world == 1:
            return n
        t = torch.tensor([n], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t)

    def close(self) -> None:
        if self.world > 1:
            dist.destroy_process_group()


__all__ = ["Ranks", "check_torchrun", "init_distributed"]
