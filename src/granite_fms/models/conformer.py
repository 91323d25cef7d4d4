"""Conformer CTC speech encoder of Granite Speech, with exact per-clip length masking.

Block-local self-attention with Shaw relative positions, a depthwise-conv module and two
half-step feed-forwards per block; after the middle block the CTC head's softmax is fed back
(self-conditioning). Unlike the Hugging Face reference, every op that mixes frames is masked
by the clip's own length, so a padded batch gives each clip the result it gets alone.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from fms.modules.feedforward import FeedForwardBlock
from fms.utils.config import ModelConfig


@dataclass
class ConformerConfig(ModelConfig):
    """Defaults are the encoder of granite-speech-3.3-2b / -8b.

    attn_backend: "math" forces the MATH SDPA backend, as the reference does (bf16 is upcast
    inside it); "auto" lets PyTorch pick a fused kernel. That is a different numerical result,
    not a rounding-level one: in bf16 the parity experiment measures differences from the
    reference of the order of the output on the real-shaped random encoder (results: parity,
    stage encoder_fused_sdpa; compile guideline GS-7).
    cat_hidden_layers: Granite Speech Plus: hidden states concatenated before the final output
        along the features (0 is the `input_linear` output, i the output of block i); empty
        for Granite Speech.
    """

    input_dim: int = 160
    emb_dim: int = 1024
    nlayers: int = 16
    nheads: int = 8
    head_dim: int = 128
    output_dim: int = 256
    context_size: int = 200
    max_pos_emb: int = 512
    conv_kernel_size: int = 15
    conv_expansion_factor: int = 2
    hidden_grow_factor: float = 4.0
    norm_eps: float = 1e-5
    attn_backend: str = "math"
    cat_hidden_layers: tuple[int, ...] = ()

    def __post_init__(self):
        # JSON round trips (and HF configs) give lists.
        self.cat_hidden_layers = tuple(self.cat_hidden_layers)

    @property
    def out_emb_dim(self) -> int:
        """Width of the encoder output: emb_dim per concatenated hidden state."""
        return self.emb_dim * (len(self.cat_hidden_layers) + 1)


def attention_dists(
    context_size: int, max_pos_emb: int, device: torch.device | None = None
) -> torch.Tensor:
    """(C, C) rows of the relative-position table: query - key distance, clamped to +-C,
    offset by max_pos_emb."""
    pos = torch.arange(context_size, device=device)
    dists = (pos.view(-1, 1) - pos.view(1, -1)).clamp(-context_size, context_size)
    return dists + max_pos_emb


class ConformerFeedForward(nn.Module):
    """Pre-norm SiLU MLP (used as a half step: the block scales its output by 0.5)."""

    def __init__(self, config: ConformerConfig):
        super().__init__()
        self.ln = nn.LayerNorm(config.emb_dim, eps=config.norm_eps)
        self.mlp = FeedForwardBlock(
            config.emb_dim,
            hidden_grow_factor=config.hidden_grow_factor,
            activation_fn=nn.SiLU(),
            p_dropout=0.0,
            use_bias=True,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln(x))


class ConformerAttention(nn.Module):
    """Self-attention within blocks of `context_size` frames, Shaw relative-position bias."""

    def __init__(self, config: ConformerConfig):
        super().__init__()
        if not 0 < config.context_size <= config.max_pos_emb:
            raise ValueError(
                f"context_size ({config.context_size}) must be in (0, max_pos_emb "
                f"({config.max_pos_emb})]"
            )
        if config.attn_backend not in ("math", "auto"):
            raise ValueError(f"attn_backend must be 'math' or 'auto', got {config.attn_backend!r}")
        inner = config.nheads * config.head_dim
        self.force_math = config.attn_backend == "math"
        self.nheads = config.nheads
        self.head_dim = config.head_dim
        self.context_size = config.context_size
        self.scale = config.head_dim**-0.5
        self.ln = nn.LayerNorm(config.emb_dim, eps=config.norm_eps)
        self.query = nn.Linear(config.emb_dim, inner, bias=False)
        self.key_value = nn.Linear(config.emb_dim, 2 * inner, bias=False)
        self.dense = nn.Linear(inner, config.emb_dim)
        self.rel_pos_emb = nn.Embedding(2 * config.max_pos_emb + 1, config.head_dim)

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor, attention_dists: torch.Tensor
    ) -> torch.Tensor:
        """x: (B, T, D); frame_mask: (B, T) True on valid frames; attention_dists: (C, C)."""
        x = self.ln(x)
        bsz, nframes, _ = x.shape
        ctx = self.context_size
        # Shapes are Python ints: under torch.compile they specialise per padded length
        # (or stay symbolic with dynamic shapes), never per clip length. At least one frame of
        # padding, even on whole blocks (one more block, all masked, all discarded): with a
        # symbolic frame count, a cut back to it that may be no cut at all is a guard, and a
        # graph for whole blocks and one for the rest.
        nblocks = nframes // ctx + 1
        pad = nblocks * ctx - nframes
        x = F.pad(x, (0, 0, 0, pad))
        key_valid = F.pad(frame_mask, (0, pad), value=False).unsqueeze(-1)
        key_valid = _blocks(key_valid, nblocks, ctx, (1, 1)).permute(0, 2, 3, 1)  # (B*N,1,1,C)
        heads = (self.nheads, self.head_dim)
        q = _blocks(self.query(x), nblocks, ctx, heads).transpose(1, 2)
        kv = self.key_value(x)
        k = _blocks(kv, nblocks, ctx, heads).transpose(1, 2)
        v = _blocks(kv, nblocks, ctx, heads, offset=self.nheads * self.head_dim).transpose(1, 2)

        rel = self.rel_pos_emb(attention_dists)  # (C, C, head_dim)
        bias = torch.einsum("bhcd,crd->bhcr", q, rel) * self.scale
        # Key-padding mask from each clip's length. For a single clip this masks exactly what
        # the reference masks for the valid query rows; padded query rows are discarded.
        bias = bias.masked_fill(~key_valid, -torch.finfo(bias.dtype).max)
        # MATH by default: the reference's numerics (it upcasts bf16 internally). The kernel
        # is called directly, which is what `sdpa_kernel(SDPBackend.MATH)` selects (bitwise the
        # same): the context manager would be a call in the compiled graph that PyTorch's
        # AOTAutograd cache refuses, so a warm start would trace it again.
        if self.force_math:
            out = torch.ops.aten._scaled_dot_product_attention_math(
                q, k, v, attn_mask=bias, scale=self.scale
            )[0]
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        out = _unblocks(out.transpose(1, 2).contiguous(), bsz, nblocks)[:, :nframes]
        return self.dense(out)


def _blocks(
    x: torch.Tensor, nblocks: int, ctx: int, shape: tuple[int, ...], offset: int = 0
) -> torch.Tensor:
    """(B, N * C, W), contiguous -> (B * N, C, *shape): a view of its last dim from `offset`.

    The strides are spelled out: `view` proves the merge of B and N by guarding on N == 1,
    and with symbolic sizes (torch.compile dynamic shapes) each outcome is another graph.
    """
    width = x.shape[-1]
    inner = [math.prod(shape[i + 1 :]) for i in range(len(shape))]
    return x.as_strided((x.shape[0] * nblocks, ctx, *shape), (ctx * width, width, *inner), offset)


def _unblocks(x: torch.Tensor, bsz: int, nblocks: int) -> torch.Tensor:
    """(B * N, C, *rest), contiguous -> (B, N * C, prod(rest)): `_blocks` undone."""
    width = math.prod(x.shape[2:])
    frames = nblocks * x.shape[1]
    return x.as_strided((bsz, frames, width), (frames * width, width, 1))


class ConformerConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv, BatchNorm (inference statistics), SiLU, pointwise.

    stride: of the depthwise conv; 2 halves the frame rate (Granite Speech 5.0's subsampling
    blocks), the output then has ceil(T / 2) frames.
    """

    def __init__(self, config: ConformerConfig, stride: int = 1):
        super().__init__()
        inner = config.emb_dim * config.conv_expansion_factor
        kernel = config.conv_kernel_size
        self.padding = (kernel // 2, kernel // 2 - (kernel + 1) % 2)
        self.ln = nn.LayerNorm(config.emb_dim, eps=config.norm_eps)
        self.up_conv = nn.Conv1d(config.emb_dim, 2 * inner, 1)
        self.depth_conv = nn.Conv1d(inner, inner, kernel, stride, groups=inner, bias=False)
        self.batch_norm = nn.BatchNorm1d(inner)
        self.down_conv = nn.Conv1d(inner, config.emb_dim, 1)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        # The pointwise convolutions are matmuls over the channels, run as such on (B, T, C):
        # the same weights, and no convolution-kernel choice (which depends on the batch
        # size, the frame count and the thread count) for symbolic shapes to guard on.
        x = F.glu(_pointwise(self.up_conv, self.ln(x)), dim=-1)
        # Zero padded frames so the depthwise conv sees what a lone clip sees: zero padding.
        x = (x * frame_mask.unsqueeze(-1).to(x.dtype)).transpose(1, 2)
        x = self.depth_conv(F.pad(x, self.padding))
        bn = self.batch_norm
        # Always running statistics: the model is inference-only, whatever its train() flag.
        x = F.batch_norm(
            x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps
        )
        return _pointwise(self.down_conv, F.silu(x).transpose(1, 2))


def _pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A kernel-size-1 Conv1d applied to (B, T, C_in) -> (B, T, C_out)."""
    return F.linear(x, conv.weight.squeeze(-1), conv.bias)


class ConformerBlock(nn.Module):
    """Half-step FFN, attention, conv module, half-step FFN, each residual; a final norm.
    `stride`: the conv module's (2 in 5.0's subsampling blocks)."""

    def __init__(self, config: ConformerConfig, stride: int = 1):
        super().__init__()
        self.ff1 = ConformerFeedForward(config)
        self.attn = ConformerAttention(config)
        self.conv = ConformerConvModule(config, stride=stride)
        self.ff2 = ConformerFeedForward(config)
        self.post_ln = nn.LayerNorm(config.emb_dim, eps=config.norm_eps)

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor, attention_dists: torch.Tensor
    ) -> torch.Tensor:
        x = 0.5 * self.ff1(x) + x
        x = self.attn(x, frame_mask, attention_dists) + x
        x = self.conv(x, frame_mask) + x
        x = 0.5 * self.ff2(x) + x
        return self.post_ln(x)


class ConformerEncoder(nn.Module):
    """(B, T, input_dim) features + (B, T) frame mask -> (B, T, out_emb_dim); padded rows are
    zero."""

    def __init__(self, config: ConformerConfig):
        super().__init__()
        cat = config.cat_hidden_layers
        if len(set(cat)) != len(cat) or not all(0 <= i < config.nlayers for i in cat):
            raise ValueError(
                f"cat_hidden_layers {list(cat)} must be distinct layer indices in "
                f"[0, nlayers = {config.nlayers})"
            )
        self.config = config
        self.input_linear = nn.Linear(config.input_dim, config.emb_dim)
        self.layers = nn.ModuleList([ConformerBlock(config) for _ in range(config.nlayers)])
        self.out = nn.Linear(config.emb_dim, config.output_dim)
        self.out_mid = nn.Linear(config.output_dim, config.emb_dim)
        self.register_buffer("attention_dists", self._attention_dists(), persistent=False)

    def _attention_dists(self, device: torch.device | None = None) -> torch.Tensor:
        return attention_dists(self.config.context_size, self.config.max_pos_emb, device)

    def set_attn_backend(self, backend: str) -> None:
        """Switch every block's attention between "math" (reference) and "auto" (fused).

        Overrides `config.attn_backend` for this module only (configs may be shared).
        """
        if backend not in ("math", "auto"):
            raise ValueError(f"attn_backend must be 'math' or 'auto', got {backend!r}")
        for layer in self.layers:
            layer.attn.force_math = backend == "math"

    def post_init(self) -> None:
        """Rebuild the non-persistent buffer after meta-device construction."""
        self.attention_dists = self._attention_dists(self.input_linear.weight.device)

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        # A plain tensor, not the view a biased linear returns for 3-D input: with the blocks
        # compiled one by one (regional), block 1 alone would get a view, which Dynamo guards
        # on (its base), and the next block's input would compile a second graph.
        x = self.input_linear(features).clone()
        cat = self.config.cat_hidden_layers
        kept = [x] if 0 in cat else []
        mid = len(self.layers) // 2
        for i, layer in enumerate(self.layers, start=1):
            x = layer(x, frame_mask, self.attention_dists)
            if i == mid:
                x = x + self.out_mid(torch.softmax(self.out(x), dim=-1))
            # After the CTC feedback: the reference keeps the middle block's tensor and then
            # adds the feedback to it in place, so what it concatenates includes it.
            if i in cat:
                kept.append(x)
        if kept:
            x = torch.cat([*kept, x], dim=-1)
        # Zeroed so the projector's windows see zero padding, as for a lone clip.
        return x * frame_mask.unsqueeze(-1).to(x.dtype)
