"""Switchable LoRA on the query and value projections of FMS's fused QKV.

Granite Speech 3.3 ships a LoRA adapter (r=64, alpha=32) that is meant to be active for requests
with audio and inactive for text-only requests. The base weights stay unmerged and the adapter's
contribution is multiplied by a 0-dim `scale` buffer: switching modes is an in-place fill of
that buffer, so compiled graphs (and CUDA graphs) are reused in both modes.

Under tensor parallel each rank holds a slice of the query and key/value heads; `B` is split
exactly like the query and value rows it adds to, and `A` (which reads the replicated input) is
replicated.
"""

import torch
import torch.nn as nn
from fms import distributed
from fms.modules.attention import FusedQKV, TPMultiHeadAttention
from fms.modules.linear import LinearModuleShardingInfo, shard_torch_linear
from fms.modules.tp import TPModule
from torch.distributed.distributed_c10d import ProcessGroup


class LoRAFusedQKV(FusedQKV):
    """FusedQKV plus `scale * B(A x)` added to queries and values."""

    def __init__(self, *args, rank: int, **kwargs):
        super().__init__(*args, **kwargs)
        q_dim, _, v_dim = self.splits
        self.lora_rank = rank  # not `rank`: TPModule uses that for the process rank
        # A for queries and values fused into one matmul: rows [0, r) -> q, [r, 2r) -> v.
        self.lora_a = nn.Linear(self.emb_dim, 2 * rank, bias=False)
        self.lora_b_q = nn.Linear(rank, q_dim, bias=False)
        self.lora_b_v = nn.Linear(rank, v_dim, bias=False)
        self.register_buffer("scale", torch.zeros(()), persistent=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.trunc_normal_(self.lora_a.weight, std=0.02)
        nn.init.zeros_(self.lora_b_q.weight)
        nn.init.zeros_(self.lora_b_v.weight)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor | None, v: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        queries, keys, values = super().forward(q, k, v)
        a_q, a_v = self.lora_a(q).chunk(2, dim=-1)
        queries = queries + self.scale * self.lora_b_q(a_q)
        values = values + self.scale * self.lora_b_v(a_v)
        return queries, keys, values


class TPLoRAFusedQKV(LoRAFusedQKV, TPModule):
    """The rank-local LoRAFusedQKV inside FMS's TPMultiHeadAttention (local head counts).

    A TP module of its own, so FMS's loader hands it every tensor under `in_proj` and it shards
    the fused QKV and the adapter with one specification (`max_partitions` as FMS's attention
    uses them: GQA key/value heads are replicated when there are fewer than ranks).
    """

    def __init__(
        self, *args, pre_tp_nheads: int, pre_tp_kvheads: int, group: ProcessGroup, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.pre_tp_nheads = pre_tp_nheads
        self.pre_tp_kvheads = pre_tp_kvheads
        self.setup_tp(distributed.rank_and_world(group)[0], group)

    @staticmethod
    def import_module(
        attn: TPMultiHeadAttention, group: ProcessGroup, *, rank: int
    ) -> "TPLoRAFusedQKV":
        """The adapter-carrying in_proj for one TP attention: its local heads, its group."""
        old = attn.in_proj
        return TPLoRAFusedQKV(
            *_qkv_args(old),
            rank=rank,
            pre_tp_nheads=attn.pre_tp_nheads,
            pre_tp_kvheads=attn.pre_tp_kvheads,
            group=group,
        )

    def load_weights(self, tensor_values: dict[str, torch.Tensor]) -> set[str] | None:
        nheads, kvheads = self.pre_tp_nheads, self.pre_tp_kvheads
        specs = {
            "qkv_fused": LinearModuleShardingInfo(self.qkv_fused, 0, [nheads, kvheads, kvheads]),
            "lora_a": LinearModuleShardingInfo(self.lora_a, 0, [1]),  # 1 partition: replicated
            "lora_b_q": LinearModuleShardingInfo(self.lora_b_q, 0, [nheads]),
            "lora_b_v": LinearModuleShardingInfo(self.lora_b_v, 0, [kvheads]),
        }
        # FMS's loader may pass the base weights and the adapter in separate calls.
        present = {name for key in tensor_values for name in key.split(".") if name in specs}
        return shard_torch_linear(
            tensor_values, self, {name: specs[name] for name in specs if name in present}
        )


def _qkv_args(qkv: FusedQKV) -> tuple:
    return (
        qkv.emb_dim,
        qkv.nheads,
        qkv.kvheads,
        qkv.emb_kq_per_head,
        qkv.emb_v_per_head,
        qkv.use_bias,
    )


def add_lora(attn_modules: list[nn.Module], rank: int) -> None:
    """Replace each FMS MultiHeadAttention's fused in_proj by a LoRAFusedQKV (same weights).

    A TPMultiHeadAttention gets a TPLoRAFusedQKV over its group, sharded like its heads.
    """
    for attn in attn_modules:
        old = attn.in_proj
        if not isinstance(old, FusedQKV):
            raise TypeError("LoRA needs fused QKV weights (fused_weights=True)")
        if isinstance(attn, TPMultiHeadAttention):
            new: LoRAFusedQKV = TPLoRAFusedQKV.import_module(attn, attn.group, rank=rank)
        else:
            new = LoRAFusedQKV(*_qkv_args(old), rank=rank)
        new.to(device=old.qkv_fused.weight.device, dtype=old.qkv_fused.weight.dtype)
        new.qkv_fused = old.qkv_fused
        attn.in_proj = new
