"""Windowed Q-Former projector: encoder frames -> LLM-width audio embeddings.

The encoder output is zero-padded to a multiple of `window_size` frames and cut into windows;
`window_size // downsample_rate` learned queries attend to each window through a BLIP-2
Q-Former (post-LayerNorm self-attention, cross-attention and GELU MLP), then a linear layer maps
them to the LLM width. 15 frames (0.6 s) become 3 audio tokens.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from fms.modules.feedforward import FeedForwardBlock
from fms.utils.config import ModelConfig


@dataclass
class QFormerConfig(ModelConfig):
    """Defaults are the projector of granite-speech-3.3-2b / -8b."""

    emb_dim: int = 1024
    encoder_dim: int = 1024
    nlayers: int = 2
    nheads: int = 16
    hidden_grow_factor: float = 4.0
    cross_attention_frequency: int = 1
    norm_eps: float = 1e-12
    window_size: int = 15
    downsample_rate: int = 5
    llm_dim: int = 2048


def output_length(frames, window_size: int, downsample_rate: int):
    """Audio embeddings the projector makes from `frames` valid encoder frames (an int or a
    tensor of counts): `window_size // downsample_rate` per window begun."""
    return (frames + window_size - 1) // window_size * (window_size // downsample_rate)


class QFormerAttention(nn.Module):
    """Multi-head attention with biases followed by dense + residual + LayerNorm."""

    def __init__(self, config: QFormerConfig, kv_dim: int):
        super().__init__()
        self.nheads = config.nheads
        self.query = nn.Linear(config.emb_dim, config.emb_dim)
        self.key = nn.Linear(kv_dim, config.emb_dim)
        self.value = nn.Linear(kv_dim, config.emb_dim)
        self.dense = nn.Linear(config.emb_dim, config.emb_dim)
        self.ln = nn.LayerNorm(config.emb_dim, eps=config.norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.nheads, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            self._heads(self.query(x)),
            self._heads(self.key(context)),
            self._heads(self.value(context)),
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.ln(self.dense(out) + x)


class QFormerLayer(nn.Module):
    def __init__(self, config: QFormerConfig, has_cross_attention: bool):
        super().__init__()
        self.self_attn = QFormerAttention(config, config.emb_dim)
        self.cross_attn = (
            QFormerAttention(config, config.encoder_dim) if has_cross_attention else None
        )
        self.mlp = FeedForwardBlock(
            config.emb_dim,
            hidden_grow_factor=config.hidden_grow_factor,
            activation_fn=nn.GELU(),
            p_dropout=0.0,
            use_bias=True,
        )
        self.mlp_ln = nn.LayerNorm(config.emb_dim, eps=config.norm_eps)

    def forward(self, x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        x = self.self_attn(x, x)
        if self.cross_attn is not None:
            x = self.cross_attn(x, window)
        return self.mlp_ln(self.mlp(x) + x)


class QFormerProjector(nn.Module):
    """(B, T, encoder_dim) -> (B, ceil(T / window) * nqueries, llm_dim)."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.config = config
        self.nqueries = config.window_size // config.downsample_rate
        self.query = nn.Parameter(torch.empty(1, self.nqueries, config.emb_dim))
        self.ln = nn.LayerNorm(config.emb_dim, eps=config.norm_eps)
        self.layers = nn.ModuleList(
            [
                QFormerLayer(config, i % config.cross_attention_frequency == 0)
                for i in range(config.nlayers)
            ]
        )
        self.linear = nn.Linear(config.emb_dim, config.llm_dim)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.query)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bsz, nframes, dim = x.shape
        window = self.config.window_size
        nwindows = math.ceil(nframes / window)
        x = F.pad(x, (0, 0, 0, nwindows * window - nframes))
        windows = x.view(bsz * nwindows, window, dim)
        h = self.ln(self.query).expand(bsz * nwindows, -1, -1)
        for layer in self.layers:
            h = layer(h, windows)
        return self.linear(h.reshape(bsz, nwindows * self.nqueries, -1))
