"""Tensor parallel Granite Speech with FMS's `TensorParallelStrategy`.

    # torchrun --nproc-per-node 2 script.py
    strategy, device = granite_fms.app.ranks.init_distributed("cuda")   # "tp" under torchrun
    model = granite_fms.load_model(path, device=device, distributed_strategy=strategy)

What is sharded is what FMS shards in its own `Granite`: each decoder block's attention (query
and key/value heads, output projection) and gated MLP, with one all-reduce after each. The
LoRA adapter follows the fused QKV it adds to (`lora.TPLoRAFusedQKV`). The embedding, the head,
the encoder and the projector are replicated, as FMS keeps its vision towers replicated.
"""

import torch
import torch.distributed as dist
from fms.distributed.strategy import (
    DistributedStrategy,
    NoOpStrategy,
    NotDistributed,
    TensorParallelStrategy,
)
from fms.models.granite import GraniteConfig
from torch import nn


def strategy_from_name(name: str | None) -> DistributedStrategy:
    """NoOpStrategy for None, a TensorParallelStrategy over the default group for "tp"."""
    if name is None:
        return NoOpStrategy
    if name != "tp":
        raise ValueError(
            f"distributed_strategy must be None or 'tp' (tensor parallel), got {name!r}"
        )
    if not dist.is_initialized():
        raise ValueError(
            "distributed_strategy='tp' needs an initialised process group "
            "(granite_fms.app.ranks.init_distributed() under torchrun)"
        )
    return TensorParallelStrategy()


def check_strategy(strategy: DistributedStrategy, text: GraniteConfig) -> None:
    """Refuse strategies other than none and tensor parallel, and a number of TP ranks that
    the LLM's heads or MLP width do not divide.

    Checked here so the error names the configuration field before FMS's TP modules assert.
    """
    if isinstance(strategy, NotDistributed):
        return
    if not isinstance(strategy, TensorParallelStrategy):
        raise ValueError(
            f"distributed strategy {type(strategy).__name__} is not supported by GraniteSpeech: "
            "use tensor parallel ('tp', TensorParallelStrategy) or none"
        )
    world = strategy.group.size()
    hidden = int(text.hidden_grow_factor * text.emb_dim)
    if text.multiple_of:
        hidden = text.multiple_of * -(-hidden // text.multiple_of)
    problems = []
    if text.nheads % world:
        problems.append(f"nheads={text.nheads} is not divisible by it")
    if text.kvheads % world and world % text.kvheads:
        problems.append(f"kvheads={text.kvheads} neither divides it nor is divisible by it")
    if hidden % world:
        problems.append(f"the MLP hidden size {hidden} is not divisible by it")
    if problems:
        raise ValueError(
            f"tensor parallel over {world} ranks: the LLM's (text_config) " + "; ".join(problems)
        )


def parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """This rank's parameters per part ("encoder", "projector", "llm"): those in sharded
    tensors, those in replicated ones, and the unsharded model's total."""
    with torch.device("meta"):
        full = dict(type(model)(model.config).named_parameters())
    counts: dict[str, dict[str, int]] = {}
    for name, p in model.named_parameters():
        part = "llm" if name.startswith("language_model.") else name.split(".")[0]
        row = counts.setdefault(part, {"sharded": 0, "replicated": 0, "unsharded_total": 0})
        row["sharded" if p.shape != full[name].shape else "replicated"] += p.numel()
        row["unsharded_total"] += full[name].numel()
    return counts


__all__ = [
    "check_strategy",
    "parameter_counts",
    "strategy_from_name",
]
