"""Switchable LoRA on the query and value projections of FMS's fused QKV.

Granite Speech 3.3 ships a LoRA adapter (r=64, alpha=32) that is meant to be active for requests
with audio and inactive for text-only requests. The base weights stay unmerged and the adapter's
contribution is multiplied by a 0-dim `scale` buffer: switching modes is an in-place fill of
that buffer, so compiled graphs (and CUDA graphs) are reused in both modes.
"""

import torch
import torch.nn as nn
from fms.modules.attention import FusedQKV


class LoRAFusedQKV(FusedQKV):
    """FusedQKV plus `scale * B(A x)` added to queries and values."""

    def __init__(self, *args, rank: int, **kwargs):
        super().__init__(*args, **kwargs)
        q_dim, _, v_dim = self.splits
        self.rank = rank
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


def add_lora(attn_modules: list[nn.Module], rank: int) -> None:
    """Replace each FMS MultiHeadAttention's fused in_proj by a LoRAFusedQKV (same weights)."""
    for attn in attn_modules:
        old = attn.in_proj
        if not isinstance(old, FusedQKV):
            raise TypeError("LoRA needs fused QKV weights (fused_weights=True)")
        new = LoRAFusedQKV(
            old.emb_dim,
            old.nheads,
            old.kvheads,
            old.emb_kq_per_head,
            old.emb_v_per_head,
            old.use_bias,
            rank=rank,
        ).to(device=old.qkv_fused.weight.device, dtype=old.qkv_fused.weight.dtype)
        new.qkv_fused = old.qkv_fused
        attn.in_proj = new
