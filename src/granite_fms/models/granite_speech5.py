"""Granite Speech 5.0 (TurboCTC) in FMS: a conformer CTC encoder, no language model.

Features (B, T, 4 * n_mels) at 50 Hz (`granite_fms.audio.features5`) -> `input_linear` ->
conformer blocks, of which the `subsample_layers` halve the frame rate -> after the middle block
the CTC softmax is fed back into the hidden states (self-conditioning) -> the CTC head, tied to
the encoder's own `out` -> logits (B, T / 2**len(subsample_layers), vocab), blank included.

The blocks that keep the frame rate are 3.x's `ConformerBlock` (the same math: half-step FFNs,
block-local attention with Shaw relative positions, the depthwise-conv module). What 5.0 adds
is written here: the subsampling block (a stride-2 depthwise conv beside a mean of frame
pairs), the frame mask halved after each, and the encoder that places the feedback.

Every op that mixes frames is masked by each clip's length (attention keys, the depthwise
conv's input, the pairs that are pooled), so a padded batch gives each clip the logits it gets
alone, and the frame count can be a symbolic size under torch.compile.
"""

import functools
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from fms import models
from fms.utils import serialization
from fms.utils.config import ModelConfig

from granite_fms.checks import check_checkpoint_tensors
from granite_fms.models.conformer import (
    ConformerBlock,
    ConformerConfig,
    attention_dists,
)

logger = logging.getLogger(__name__)

_TORCH_LAYERS = (nn.Linear, nn.LayerNorm, nn.Conv1d, nn.BatchNorm1d, nn.Embedding)


# Settings of `GraniteSpeech5Config` that are `ConformerConfig`'s, with the same name.
_CONFORMER_SETTINGS = (
    "emb_dim", "nlayers", "nheads", "head_dim", "context_size", "max_pos_emb", "conv_kernel_size",
    "conv_expansion_factor", "hidden_grow_factor", "norm_eps", "attn_backend",
)  # fmt: skip


@dataclass
class GraniteSpeech5Config(ModelConfig):
    """Defaults are granite-speech-5.0-470m-turboctc.

    n_mels: mel bins; an encoder input frame is two mel frames, each with its delta (4 x n_mels).
    subsample_layers: blocks (0-based) that halve the frame rate.
    src_vocab_size: CTC vocabulary, the blank included; blank_id: the blank (HF's pad id).
    tie_heads: the CTC head is the self-conditioning head `encoder.out` (HF's
        `tie_word_embeddings`).
    attn_backend: as in `ConformerConfig`.
    """

    n_mels: int = 80
    emb_dim: int = 1024
    nlayers: int = 16
    nheads: int = 8
    head_dim: int = 128
    hidden_grow_factor: float = 4.0
    context_size: int = 128
    max_pos_emb: int = 512
    conv_kernel_size: int = 7
    conv_expansion_factor: int = 2
    subsample_layers: tuple[int, ...] = (0, 1)
    src_vocab_size: int = 16384
    blank_id: int = 0
    norm_eps: float = 1e-5
    tie_heads: bool = True
    attn_backend: str = "math"

    def __post_init__(self):
        # JSON round trips (and HF configs) give lists.
        self.subsample_layers = tuple(self.subsample_layers)

    @property
    def input_dim(self) -> int:
        return 4 * self.n_mels

    @property
    def frame_stride(self) -> int:
        """Encoder input frames per output frame."""
        return 2 ** len(self.subsample_layers)

    def conformer_config(self) -> ConformerConfig:
        """The settings of the blocks shared with 3.x's conformer."""
        return ConformerConfig(
            input_dim=self.input_dim,
            output_dim=self.src_vocab_size,
            **{name: getattr(self, name) for name in _CONFORMER_SETTINGS},
        )

    def check(self) -> None:
        """ValueError naming the first setting this architecture cannot build."""
        layers = tuple(self.subsample_layers)
        if len(set(layers)) != len(layers) or not all(0 <= i < self.nlayers for i in layers):
            raise ValueError(
                f"subsample_layers {list(layers)} must be distinct block indices in "
                f"[0, nlayers = {self.nlayers})"
            )
        if self.conv_kernel_size % 2 == 0:
            raise ValueError(
                f"conv_kernel_size must be odd (same padding both sides), got "
                f"{self.conv_kernel_size}"
            )
        if not 0 <= self.blank_id < self.src_vocab_size:
            raise ValueError(
                f"blank_id {self.blank_id} is outside the vocabulary (0 to "
                f"{self.src_vocab_size - 1})"
            )


def halve_mask(frame_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T // 2): a pair of frames is valid iff both are; an odd last frame is
    dropped, as the pooled residual drops it."""
    # A pooling, not a slice to an even length: Dynamo guards on whether such a slice keeps
    # every frame, which would make a graph for odd and one for even counts at every rate.
    pairs = F.avg_pool1d(frame_mask.unsqueeze(1).to(torch.float32), 2)
    return pairs.squeeze(1) == 1


class SubsamplingBlock(ConformerBlock):
    """A conformer block that halves the frame rate.

    The first half-step FFN and the attention run at the input rate; the conv module's
    depthwise conv has stride 2 and its residual is the mean of each pair of frames; the second
    half-step FFN runs at the output rate.
    """

    def __init__(self, config: ConformerConfig):
        super().__init__(config, stride=2)

    def forward(
        self, x: torch.Tensor, frame_mask: torch.Tensor, attention_dists: torch.Tensor
    ) -> torch.Tensor:
        x = 0.5 * self.ff1(x) + x
        x = self.attn(x, frame_mask, attention_dists) + x
        pairs = x.unfold(1, 2, 2).mean(dim=-1)  # an odd last frame dropped
        # A gather, not a slice: cutting the ceil(T / 2) conv frames to T // 2 is no cut for an
        # even T, and a symbolic length would guard on that (a graph for each parity).
        keep = torch.arange(pairs.shape[1], device=x.device)
        x = pairs + self.conv(x, frame_mask).index_select(1, keep)
        x = 0.5 * self.ff2(x) + x
        return self.post_ln(x)


class GraniteSpeech5Encoder(nn.Module):
    """(B, T, input_dim) features + (B, T) frame mask -> (B, T', emb_dim), padded rows zero."""

    def __init__(self, config: GraniteSpeech5Config):
        super().__init__()
        self.config = config
        blocks = config.conformer_config()
        self.input_linear = nn.Linear(config.input_dim, config.emb_dim)
        self.layers = nn.ModuleList(
            [
                SubsamplingBlock(blocks) if i in config.subsample_layers else ConformerBlock(blocks)
                for i in range(config.nlayers)
            ]
        )
        self.out = nn.Linear(config.emb_dim, config.src_vocab_size)
        self.out_mid = nn.Linear(config.src_vocab_size, config.emb_dim)
        self.register_buffer("attention_dists", self._attention_dists(), persistent=False)

    def _attention_dists(self, device: torch.device | None = None) -> torch.Tensor:
        return attention_dists(self.config.context_size, self.config.max_pos_emb, device)

    def post_init(self) -> None:
        """Rebuild the non-persistent buffer after meta-device construction."""
        self.attention_dists = self._attention_dists(self.input_linear.weight.device)

    def forward(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        x = self.input_linear(features)
        mid = len(self.layers) // 2
        for i, layer in enumerate(self.layers, start=1):
            x = layer(x, frame_mask, self.attention_dists)
            if isinstance(layer, SubsamplingBlock):
                frame_mask = halve_mask(frame_mask)
            if i == mid:  # self-conditioned CTC: the middle block's posteriors fed back
                x = x + self.out_mid(torch.softmax(self.out(x), dim=-1))
        return x * frame_mask.unsqueeze(-1).to(x.dtype)


class GraniteSpeech5(nn.Module):
    """CTC speech recogniser: `model(features, frame_mask)` -> logits over the vocabulary
    (blank included) per output frame; `greedy_ids` -> HF's `generate` (argmax per frame)."""

    def __init__(self, config: GraniteSpeech5Config | None = None, **kwargs):
        super().__init__()
        self.config = (config or GraniteSpeech5Config()).updated(**kwargs)
        self.config.check()
        self.encoder = GraniteSpeech5Encoder(self.config)
        self.head = nn.Linear(self.config.emb_dim, self.config.src_vocab_size)

    @property
    def device(self) -> torch.device:
        """The CTC head's device."""
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The CTC head's dtype."""
        return self.head.weight.dtype

    @classmethod
    def from_config(cls, config: GraniteSpeech5Config) -> "GraniteSpeech5":
        return cls(config)

    def get_config(self) -> GraniteSpeech5Config:
        return self.config

    def reset_parameters(self) -> None:
        """Random initialisation of every weight (FMS calls this when there is no checkpoint)."""
        for module in self.modules():
            if isinstance(module, _TORCH_LAYERS):
                module.reset_parameters()  # BatchNorm: running statistics too

    def post_init(self) -> None:
        """Tie the head, rebuild the non-persistent buffer, refuse tensors never loaded."""
        if self.config.tie_heads:
            self.head.weight = self.encoder.out.weight
            self.head.bias = self.encoder.out.bias
        self.encoder.post_init()
        if self.encoder.input_linear.weight.device.type != "meta":
            missing = [name for name, p in self.named_parameters() if p.is_meta]
            if missing:
                raise ValueError(f"checkpoint did not provide these tensors: {missing}")

    def check_inputs(self, features: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """Validate shapes; return the frame mask (bool; all frames valid if None)."""
        dim = self.config.input_dim
        if features.dim() != 3 or features.shape[-1] != dim:
            raise ValueError(
                f"input features must be (batch, frames, {dim}), got {tuple(features.shape)}"
            )
        if features.shape[1] < self.config.frame_stride:
            raise ValueError(
                f"input features have {features.shape[1]} frames; the encoder needs at least "
                f"{self.config.frame_stride} (one output frame)"
            )
        if frame_mask is None:
            return torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        if frame_mask.shape != features.shape[:2]:
            raise ValueError(
                f"frame mask must be (batch, frames) = {tuple(features.shape[:2])}, got "
                f"{tuple(frame_mask.shape)}"
            )
        return frame_mask.to(torch.bool)

    def output_mask(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) mask of input frames -> (B, T') mask of output frames."""
        for _ in self.config.subsample_layers:
            frame_mask = halve_mask(frame_mask)
        return frame_mask

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, 4 * n_mels) features; frame_mask: (B, T), True on each clip's frames.
        Returns (B, T', vocab) logits; on padded output frames they are the head's bias."""
        frame_mask = self.check_inputs(x, frame_mask)
        hidden = self.encoder(x.to(self.encoder.input_linear.weight.dtype), frame_mask)
        return self.head(hidden)

    def greedy_ids(
        self, x: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T') argmax token per output frame, the blank on padded frames (HF's
        `generate`), and the (B, T') mask of valid output frames. One graph, no host sync."""
        frame_mask = self.check_inputs(x, frame_mask)
        valid = self.output_mask(frame_mask)
        ids = self(x, frame_mask).argmax(dim=-1)
        return ids.masked_fill(~valid, self.config.blank_id), valid


# ----- variants ------------------------------------------------------------------------------

_5_0_470m_config = GraniteSpeech5Config()

# Small built-in model for CPU work, tests of the pipeline and the docs: the real layout and
# vocabulary (2 subsampling blocks, feedback after the middle block), a fraction of the widths.
_tiny_ctc_config = GraniteSpeech5Config(emb_dim=256, nlayers=4, nheads=4, head_dim=64)

ARCHITECTURE = "granite_speech5"


def _factory(config: GraniteSpeech5Config):
    def factory(**kwargs):
        kwargs.pop("vision_only", None)  # get_model passes it to every model
        return GraniteSpeech5(config, **kwargs)

    return factory


models.register_model(ARCHITECTURE, "5.0-470m", _factory(_5_0_470m_config))
models.register_model(ARCHITECTURE, "tiny-ctc", _factory(_tiny_ctc_config))


# ----- serialization: Hugging Face checkpoint -> FMS names ---------------------------------------

# Checkpoint names appear only here. k_proj and v_proj get intermediate names (`attn.key`,
# `attn.value`) until they are fused; pointwise Linear weights become 1x1 Conv1d weights.
_LAYER = r"^(encoder\.layers\.\d+)\."
_RENAMES = [
    (_LAYER + r"feed_forward([12])\.linear1\.", r"\1.ff\2.mlp.w1."),
    (_LAYER + r"feed_forward([12])\.linear2\.", r"\1.ff\2.mlp.w2."),
    (_LAYER + r"norm_feed_forward([12])\.", r"\1.ff\2.ln."),
    (_LAYER + r"norm_self_att\.", r"\1.attn.ln."),
    (_LAYER + r"self_attn\.q_proj\.", r"\1.attn.query."),
    (_LAYER + r"self_attn\.k_proj\.", r"\1.attn.key."),
    (_LAYER + r"self_attn\.v_proj\.", r"\1.attn.value."),
    (_LAYER + r"self_attn\.o_proj\.", r"\1.attn.dense."),
    (_LAYER + r"self_attn\.rel_pos_emb\.", r"\1.attn.rel_pos_emb."),
    (_LAYER + r"norm_conv\.", r"\1.conv.ln."),
    (_LAYER + r"conv\.pointwise_lin1\.", r"\1.conv.up_conv."),
    (_LAYER + r"conv\.depthwise_conv\.", r"\1.conv.depth_conv."),
    (_LAYER + r"conv\.norm\.", r"\1.conv.batch_norm."),
    (_LAYER + r"conv\.pointwise_lin2\.", r"\1.conv.down_conv."),
    (_LAYER + r"norm_out\.", r"\1.post_ln."),
    (r"^ctc_head\.", "head."),
]
_KV = re.compile(r"^(encoder\.layers\.\d+\.attn)\.(key|value)\.weight$")
_POINTWISE = re.compile(r"^encoder\.layers\.\d+\.conv\.(up|down)_conv\.weight$")
_HEAD = ("head.weight", "head.bias")
_OUT = ("encoder.out.weight", "encoder.out.bias")


def hf_to_fms_name(name: str) -> str:
    """FMS name of one checkpoint tensor (before k/v fusion)."""
    for pattern, repl in _RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def _hf_to_fms_names(input_sd: Mapping[str, Any], **kwargs) -> Mapping[str, Any]:
    return {hf_to_fms_name(k): v for k, v in input_sd.items()}


@functools.lru_cache(maxsize=8)
def _checkpoint_shapes(config_json: str) -> dict[str, tuple[int, ...]]:
    """Shape of each tensor a checkpoint may hold, by its FMS name before fusion."""
    with torch.device("meta"):
        model = GraniteSpeech5(GraniteSpeech5Config(**json.loads(config_json)))
    shapes = {}
    for name, t in model.state_dict().items():
        if name.endswith("attn.key_value.weight"):
            prefix = name.removesuffix("key_value.weight")
            half = (t.shape[0] // 2, *t.shape[1:])
            shapes[prefix + "key.weight"] = shapes[prefix + "value.weight"] = half
        elif _POINTWISE.match(name):
            shapes[name] = tuple(t.shape[:2])
        else:
            shapes[name] = tuple(t.shape)
    return shapes


def _check_tensors(
    input_sd: Mapping[str, Any],
    model_config: GraniteSpeech5Config | None = None,
    origin: Mapping[str, list[str]] | None = None,
    **kwargs,
) -> Mapping[str, Any]:
    """Names and shapes checked before any tensor is fused, the k/v pairs complete, and the
    head of a tied checkpoint dropped (it must equal `encoder.out`)."""
    if model_config is None:
        raise ValueError("the granite_speech5 checkpoint adapter needs model_config")
    shapes = _checkpoint_shapes(json.dumps(model_config.as_dict(), sort_keys=True))
    check_checkpoint_tensors(
        input_sd, shapes, origin, "is the checkpoint for another configuration?"
    )
    for name in input_sd:
        match = _KV.match(name)
        other = match and f"{match.group(1)}.{'value' if match.group(2) == 'key' else 'key'}.weight"
        if other and other not in input_sd:
            raise ValueError(
                f"the checkpoint has {name} but not {other} (k_proj and v_proj are fused and "
                "must both be there)"
            )
    if model_config.tie_heads and any(h in input_sd for h in _HEAD):
        for head, out in zip(_HEAD, _OUT, strict=True):
            if head in input_sd and (
                out not in input_sd or not torch.equal(input_sd[head], input_sd[out])
            ):
                raise ValueError(
                    "config.json ties ctc_head to encoder.out (tie_word_embeddings=true) but the "
                    f"checkpoint's ctc_head.{head.split('.')[1]} differs from encoder.out's; "
                    "set tie_word_embeddings to false if the head is its own"
                )
        input_sd = {k: v for k, v in input_sd.items() if k not in _HEAD}
    return input_sd


def _weight_fusion(input_sd: Mapping[str, Any], **kwargs) -> Mapping[str, Any]:
    """k_proj and v_proj -> one `key_value`; pointwise Linear weights -> 1x1 Conv1d weights."""
    sd = {}
    for name, tensor in input_sd.items():
        match = _KV.match(name)
        if match and match.group(2) == "key":
            value = input_sd[f"{match.group(1)}.value.weight"]
            sd[f"{match.group(1)}.key_value.weight"] = torch.cat([tensor, value])
        elif not match:
            sd[name] = tensor.unsqueeze(-1) if _POINTWISE.match(name) else tensor
    return sd


serialization.register_adapter_step(ARCHITECTURE, "hf_to_fms_names", _hf_to_fms_names)
serialization.register_adapter_step(ARCHITECTURE, "check_tensors", _check_tensors)
serialization.register_adapter_step(ARCHITECTURE, "weight_fusion", _weight_fusion)
serialization.register_adapter(
    ARCHITECTURE, "hf", ["hf_to_fms_names", "check_tensors", "weight_fusion"]
)
