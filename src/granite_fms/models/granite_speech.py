"""Granite Speech in FMS: conformer encoder -> Q-Former projector -> merge -> Granite LLM.

Follows FMS's multimodal convention (`llava_next.py`): `forward` runs the LLM on token ids or
embeddings; `prepare_inputs_for_generation` runs encoder, projector and merge at iteration 0
and returns embeddings at every iteration, for `fms.utils.generation.generate`.

Logits follow FMS's Granite convention: divided by `logits_scaling`. Hugging Face's
`GraniteSpeechForConditionalGeneration` (transformers 5.x) does not divide, so its logits are
exactly `logits_scaling` times ours; greedy tokens are the same, log-probs are not.
"""

import functools
import json
import logging
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn as nn
from fms import models
from fms.distributed.strategy import DistributedStrategy, NoOpStrategy
from fms.models.granite import Granite, GraniteConfig
from fms.utils import serialization
from fms.utils.config import ModelConfig

from granite_fms.checks import check_checkpoint_tensors
from granite_fms.files import check_fms_directory
from granite_fms.fms_compat import get_model_directory
from granite_fms.models.conformer import ConformerConfig, ConformerEncoder
from granite_fms.models.lora import LoRAFusedQKV, add_lora
from granite_fms.models.qformer import QFormerConfig, QFormerProjector, output_length
from granite_fms.models.tp import check_strategy

logger = logging.getLogger(__name__)

_TORCH_LAYERS = (nn.Linear, nn.LayerNorm, nn.Conv1d, nn.BatchNorm1d, nn.Embedding)
_COUNT_MISMATCH = "audio placeholders and audio embeddings do not match"
AdapterMode = Literal["auto", "on", "off"]


def _granite_3_3_text(emb_dim: int, hidden: int, attention_multiplier: float, logits: float):
    return GraniteConfig(
        src_vocab_size=49160,
        emb_dim=emb_dim,
        norm_eps=1e-5,
        nheads=32,
        head_dim=emb_dim // 32,
        kvheads=8,
        nlayers=40,
        hidden_grow_factor=hidden / emb_dim,
        multiple_of=1,
        max_expected_seq_len=131072,
        rope_theta=1e7,
        pad_id=0,
        tie_heads=True,
        embedding_multiplier=12.0,
        residual_multiplier=0.22,
        attention_multiplier=attention_multiplier,
        logits_scaling=logits,
    )


@dataclass
class GraniteSpeechConfig(ModelConfig):
    """Defaults are granite-speech-3.3-2b (revision 3.3.2)."""

    encoder_config: ConformerConfig = field(default_factory=ConformerConfig)
    projector_config: QFormerConfig = field(default_factory=QFormerConfig)
    text_config: GraniteConfig = field(
        default_factory=lambda: _granite_3_3_text(2048, 8192, 1 / 64, 8.0)
    )
    audio_token_index: int = 49159
    lora_rank: int = 64  # 0: no adapter
    lora_alpha: float = 32.0
    fused_weights: bool = True

    def __post_init__(self):
        # Configs round-tripped through JSON or `as_dict()` arrive as plain dicts.
        for name, cls in (
            ("encoder_config", ConformerConfig),
            ("projector_config", QFormerConfig),
            ("text_config", GraniteConfig),
        ):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls(**value))

    @property
    def lora_scale(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank else 0.0


class GraniteSpeech(nn.Module):
    """Speech-aware Granite LLM. Audio enters through `input_features` (B, T, 160) and a
    (B, T) boolean `input_features_mask` of valid encoder frames; each clip's projected
    embeddings replace its `<|audio|>` placeholders, in row-major order as in the reference."""

    def __init__(
        self,
        config: GraniteSpeechConfig | None = None,
        distributed_strategy: DistributedStrategy = NoOpStrategy,
        **kwargs,
    ):
        super().__init__()
        self.config = (config or GraniteSpeechConfig()).updated(**kwargs)
        cfg = self.config
        if not cfg.fused_weights:
            raise ValueError("GraniteSpeech needs fused_weights=True (its LoRA wraps fused QKV)")
        if cfg.projector_config.llm_dim != cfg.text_config.emb_dim:
            raise ValueError(
                f"projector_config.llm_dim ({cfg.projector_config.llm_dim}) must equal "
                f"text_config.emb_dim ({cfg.text_config.emb_dim})"
            )
        enc = cfg.encoder_config
        if cfg.projector_config.encoder_dim != enc.out_emb_dim:
            raise ValueError(
                f"projector_config.encoder_dim ({cfg.projector_config.encoder_dim}) must equal "
                f"the encoder's output width, encoder_config.emb_dim ({enc.emb_dim}) x "
                f"(1 + {len(enc.cat_hidden_layers)} cat_hidden_layers) = {enc.out_emb_dim}"
            )
        check_strategy(distributed_strategy, cfg.text_config)
        # Only the LLM is sharded (FMS's Granite TP); the encoder and projector are replicated,
        # as FMS keeps its vision towers replicated.
        self.distributed_strategy = distributed_strategy
        self.encoder = ConformerEncoder(cfg.encoder_config)
        self.projector = QFormerProjector(cfg.projector_config)
        self.language_model = Granite(cfg.text_config, distributed_strategy)
        if cfg.lora_rank:
            add_lora([block.attn for block in self.language_model.base_model.layers], cfg.lora_rank)
        self.adapter_mode: AdapterMode = "auto"

    @classmethod
    def from_config(cls, config: GraniteSpeechConfig) -> "GraniteSpeech":
        return cls(config)

    def get_config(self) -> GraniteSpeechConfig:
        return self.config

    def reset_parameters(self) -> None:
        """Random initialisation of every weight (FMS calls this when there is no checkpoint)."""
        self.language_model.reset_parameters()
        for module in [*self.encoder.modules(), *self.projector.modules()]:
            if isinstance(module, _TORCH_LAYERS):
                module.reset_parameters()  # BatchNorm: running statistics too
        self.projector.reset_parameters()
        for lora in self._lora_modules():
            lora.reset_parameters()

    def post_init(self) -> None:
        """Tie weights, rebuild non-persistent buffers and refuse tensors never loaded."""
        self.language_model.post_init()
        self.encoder.post_init()
        for lora in self._lora_modules():
            lora.scale = torch.zeros((), device=self.device, dtype=lora.lora_a.weight.dtype)
        if self.device.type != "meta":
            missing = [name for name, p in self.named_parameters() if p.is_meta]
            if missing:
                raise ValueError(
                    f"checkpoint did not provide these tensors: {missing}{missing_hint(missing)}"
                )
        self._set_adapter_active(False)

    @property
    def device(self) -> torch.device:
        """The LLM's device (its embedding table's; under tensor parallel, this rank's)."""
        return self.language_model.base_model.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The LLM's dtype (its embedding table's)."""
        return self.language_model.base_model.embedding.weight.dtype

    # ----- LoRA adapter: on for requests with audio, off for text-only ones ------------------

    def _lora_modules(self) -> list[LoRAFusedQKV]:
        return [m for m in self.modules() if isinstance(m, LoRAFusedQKV)]

    def set_adapter(self, mode: AdapterMode) -> None:
        """ "auto" (default): adapter active iff the request carries audio; "on"/"off": forced."""
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"adapter mode must be 'auto', 'on' or 'off', got {mode!r}")
        self.adapter_mode = mode
        if mode != "auto":
            self._set_adapter_active(mode == "on")

    def _set_adapter_active(self, active: bool) -> None:
        scale = self.config.lora_scale if active else 0.0
        for lora in self._lora_modules():
            lora.scale.fill_(scale)

    def start_request(self, has_audio: bool) -> None:
        """Set the adapter for a new request (a no-op unless the mode is "auto")."""
        if self.adapter_mode == "auto":
            self._set_adapter_active(has_audio)

    @property
    def adapter_active(self) -> bool:
        loras = self._lora_modules()
        return bool(loras) and bool(loras[0].scale != 0)

    # ----- audio path: encoder -> projector -> merge (no host syncs, no data-dependent shapes) -

    def audio_token_counts(self, frame_mask: torch.Tensor) -> torch.Tensor:
        """Number of audio embeddings (placeholders) per clip, from its valid frame count."""
        proj = self.config.projector_config
        return output_length(frame_mask.sum(dim=1), proj.window_size, proj.downsample_rate)

    def audio_embeddings(self, features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, 160), (B, T) -> (B, ceil(T / window) * nqueries, llm_dim)."""
        dtype = self.encoder.input_linear.weight.dtype
        return self.projector(self.encoder(features.to(dtype), frame_mask))

    def merge_audio(
        self, input_ids: torch.Tensor, audio_embeds: torch.Tensor, frame_mask: torch.Tensor
    ) -> torch.Tensor:
        """Text embeddings with the placeholders replaced by each clip's valid audio embeddings.

        The k-th placeholder of the batch (row-major) takes the k-th valid audio embedding:
        a cumsum/searchsorted/gather instead of boolean-mask indexing, so the shapes never
        depend on the data and the graph needs no host sync.
        """
        is_audio = input_ids == self.config.audio_token_index
        embeds = self.embed_text(input_ids)
        nclips, per_clip, dim = audio_embeds.shape
        counts = self.audio_token_counts(frame_mask)
        ends = counts.cumsum(0)
        flat_audio = is_audio.flatten()
        k = flat_audio.long().cumsum(0) - 1
        clip = torch.searchsorted(ends, k, right=True).clamp(max=nclips - 1)
        offset = k - (ends - counts)[clip]
        index = (clip * per_clip + offset).clamp(0, nclips * per_clip - 1)
        audio = audio_embeds.reshape(-1, dim).to(embeds.dtype).index_select(0, index)
        merged = torch.where(flat_audio.unsqueeze(-1), audio, embeds.reshape(-1, dim))
        return merged.view_as(embeds)

    def embed_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings; placeholder ids look up id 0, as in the reference (in the 4.x
        family the audio id may lie past the end of the vocabulary)."""
        is_audio = input_ids == self.config.audio_token_index
        return self.language_model.base_model.embedding(torch.where(is_audio, 0, input_ids))

    def embed_audio_and_text(
        self, input_ids: torch.Tensor, features: torch.Tensor, frame_mask: torch.Tensor
    ) -> torch.Tensor:
        """The whole audio path, one graph under torch.compile(fullgraph=True)."""
        return self.merge_audio(input_ids, self.audio_embeddings(features, frame_mask), frame_mask)

    def check_audio_inputs(
        self, input_ids: torch.Tensor, features: torch.Tensor, frame_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Validate shapes and placeholder counts; return the frame mask (as bool).

        Eager, a count mismatch is a ValueError raised on the host; under torch.compile it is
        an asynchronous device-side assert, so the whole forward stays one graph. On CUDA that
        assert ends the process's CUDA context: callers that compile (`Generator`) run this
        check eagerly on the host first, so the in-graph one never fires for them.
        """
        enc = self.config.encoder_config
        if features.dim() != 3 or features.shape[-1] != enc.input_dim:
            raise ValueError(
                f"input_features must be (batch, frames, {enc.input_dim}), got "
                f"{tuple(features.shape)}"
            )
        if frame_mask is None:
            frame_mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        if frame_mask.shape != features.shape[:2]:
            raise ValueError(
                f"input_features_mask must be (batch, frames) = {tuple(features.shape[:2])} "
                f"(a mask over encoder frames), got {tuple(frame_mask.shape)}"
            )
        frame_mask = frame_mask.to(torch.bool)
        n_tokens = (input_ids == self.config.audio_token_index).sum()
        n_embeds = self.audio_token_counts(frame_mask).sum()
        if torch.compiler.is_compiling():
            # Inside a graph the counts are never read on the host: the check runs on the
            # device when the graph runs (RuntimeError on CPU, a device assert on CUDA).
            torch._assert_async(n_tokens == n_embeds, _COUNT_MISMATCH)
        elif int(n_tokens) != int(n_embeds):
            raise ValueError(
                f"{_COUNT_MISMATCH}: the prompt holds {int(n_tokens)} audio tokens (id "
                f"{self.config.audio_token_index}) but the audio gives {int(n_embeds)} embeddings"
            )
        return frame_mask

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """LLM input embeddings (before `embedding_multiplier`) for token ids and optional audio."""
        if input_features is None:
            return self.embed_text(input_ids)
        frame_mask = self.check_audio_inputs(input_ids, input_features, input_features_mask)
        return self.embed_audio_and_text(input_ids, input_features, frame_mask)

    # ----- LLM -------------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        past_key_value_states: list | None = None,
        use_cache: bool = False,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        **attn_kwargs,
    ):
        """Run the LLM on token ids (B, S) or embeddings (B, S, D).

        With token ids, `input_features` (if given) are encoded and merged first. Embeddings are
        taken as final (audio already merged). The LoRA adapter is left as the last request
        set it (`start_request`, `set_adapter`), as in the reference's `forward`, except when
        this call merges audio itself at a request's first step: then it is a speech request
        and the adapter turns on (in "auto" mode). That is how
        `fms.utils.generation.generate` without the `prepare_inputs_for_generation` hook
        works: it passes `input_features` at every step, and on a decode step (a non-empty
        cache) they are ignored, since the audio is already in the cache.
        """
        if past_key_value_states:
            input_features = None  # a decode step: the audio is already in the cache
        if x.dim() == 2:  # ids: placeholders look up id 0, audio (if any) merged
            if input_features is not None:
                self.start_request(True)
            x = self.embed_inputs(x, input_features, input_features_mask)
        return self.language_model(
            x,
            position_ids=position_ids,
            past_key_value_states=past_key_value_states,
            use_cache=use_cache,
            **attn_kwargs,
        )

    def prepare_inputs_for_generation(
        self, iteration: int, input_ids: torch.Tensor, kwargs: MutableMapping[str, Any]
    ) -> tuple[torch.Tensor, MutableMapping[str, Any]]:
        """Hook for `fms.utils.generation.generate(prepare_model_inputs_hook=...)`."""
        features = kwargs.get("input_features")
        if iteration == 0:
            self.start_request(features is not None)
        if kwargs.get("use_cache") and iteration > 0:
            return self.language_model.base_model.embedding(input_ids), kwargs
        return self.embed_inputs(input_ids, features, kwargs.get("input_features_mask")), kwargs


# ----- variants ------------------------------------------------------------------------------

_3_3_2b_config = GraniteSpeechConfig()

_3_3_8b_config = GraniteSpeechConfig(
    projector_config=QFormerConfig(llm_dim=4096),
    text_config=_granite_3_3_text(4096, 12800, 1 / 128, 16.0),
)

# Small built-in default for CPU work, tests of the pipeline and the docs: real 3.3 layout and
# vocabulary, a fraction of the widths and depths.
_tiny_config = GraniteSpeechConfig(
    encoder_config=ConformerConfig(emb_dim=256, nlayers=4, nheads=4, head_dim=64, output_dim=64),
    projector_config=QFormerConfig(emb_dim=256, encoder_dim=256, nheads=4, llm_dim=256),
    text_config=GraniteConfig(
        src_vocab_size=49160,
        emb_dim=256,
        norm_eps=1e-5,
        nheads=4,
        head_dim=64,
        kvheads=2,
        nlayers=4,
        hidden_grow_factor=4.0,
        multiple_of=1,
        max_expected_seq_len=4096,
        rope_theta=1e7,
        pad_id=0,
        tie_heads=True,
        embedding_multiplier=12.0,
        residual_multiplier=0.22,
        attention_multiplier=1 / 64,
        logits_scaling=8.0,
    ),
    lora_rank=16,
    lora_alpha=8.0,
)

# FMS's pull request #499 (open on 2026-12-01; not in ibm-fms 1.13.1) registers an
# implementation of its own as "granite_speech" (variants 3.3-8b, 3.2-8b, 3.3-2b). Where an
# installed FMS already has that name this package registers under ARCHITECTURE =
# "granite_speech_fms" instead, so both stay usable.
_FMS_NAME = "granite_speech"
ARCHITECTURE = _FMS_NAME if _FMS_NAME not in models.list_models() else f"{_FMS_NAME}_fms"
if ARCHITECTURE != _FMS_NAME:
    logger.warning(
        "FMS already registers a %r architecture (its own implementation): granite_fms "
        "registers its GraniteSpeech as %r. get_model(%r, ...) builds FMS's model; "
        "get_model(%r, ...) and get_model('hf_pretrained', ...) build granite_fms's.",
        _FMS_NAME,
        ARCHITECTURE,
        _FMS_NAME,
        ARCHITECTURE,
    )


def _factory(config: GraniteSpeechConfig):
    def factory(**kwargs):
        kwargs.pop("vision_only", None)  # get_model passes it to every model
        model_dir = get_model_directory()
        if model_dir is not None:  # refused before FMS reads any tensor
            check_fms_directory(model_dir)
        return GraniteSpeech(config, **kwargs)

    return factory


models.register_model(ARCHITECTURE, "3.3-2b", _factory(_3_3_2b_config))
models.register_model(ARCHITECTURE, "3.3-8b", _factory(_3_3_8b_config))
models.register_model(ARCHITECTURE, "tiny", _factory(_tiny_config))


# ----- serialization: Hugging Face checkpoint -> FMS names ---------------------------------------

# Checkpoint names appear only here. Keys are first normalised (transformers 4.x and 5.x layouts,
# peft adapter files, and peft-wrapped base weights), then renamed.
_PREFIX_RULES = [
    (r"^model\.(encoder|projector|language_model)\.", r"\1."),
    (r"^language_model\.layers\.", "language_model.model.layers."),
    (r"^language_model\.(embed_tokens|norm)\.", r"language_model.model.\1."),
    (r"^(?:language_model\.)?lm_head\.", "language_model.head."),
    (r"\.base_layer\.", "."),
]

_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:model\.)?language_model\.(?:model\.)?layers\.(\d+)\."
    r"self_attn\.([qv])_proj\.lora_([AB])(?:\.default)?\.weight$"
)

_RENAMES = [
    # encoder
    (r"^(encoder\.layers\.\d+\.ff[12])\.pre_norm\.", r"\1.ln."),
    (r"^(encoder\.layers\.\d+\.ff[12])\.up_proj\.", r"\1.mlp.w1."),
    (r"^(encoder\.layers\.\d+\.ff[12])\.down_proj\.", r"\1.mlp.w2."),
    (r"^(encoder\.layers\.\d+\.attn)\.pre_norm\.", r"\1.ln."),
    (r"^(encoder\.layers\.\d+\.attn)\.to_q\.", r"\1.query."),
    (r"^(encoder\.layers\.\d+\.attn)\.to_kv\.", r"\1.key_value."),
    (r"^(encoder\.layers\.\d+\.attn)\.to_out\.", r"\1.dense."),
    (r"^(encoder\.layers\.\d+\.conv)\.norm\.", r"\1.ln."),
    (r"^(encoder\.layers\.\d+\.conv)\.depth_conv\.conv\.", r"\1.depth_conv."),
    (r"^(encoder\.layers\.\d+)\.post_norm\.", r"\1.post_ln."),
    # projector
    (r"^projector\.qformer\.layernorm\.", "projector.ln."),
    (r"^projector\.qformer\.encoder\.layer\.", "projector.layers."),
    (r"^(projector\.layers\.\d+)\.attention\.attention\.", r"\1.self_attn."),
    (r"^(projector\.layers\.\d+)\.attention\.output\.dense\.", r"\1.self_attn.dense."),
    (r"^(projector\.layers\.\d+)\.attention\.output\.LayerNorm\.", r"\1.self_attn.ln."),
    (r"^(projector\.layers\.\d+)\.crossattention\.attention\.", r"\1.cross_attn."),
    (r"^(projector\.layers\.\d+)\.crossattention\.output\.dense\.", r"\1.cross_attn.dense."),
    (r"^(projector\.layers\.\d+)\.crossattention\.output\.LayerNorm\.", r"\1.cross_attn.ln."),
    (r"^(projector\.layers\.\d+)\.intermediate_query\.dense\.", r"\1.mlp.w1."),
    (r"^(projector\.layers\.\d+)\.output_query\.dense\.", r"\1.mlp.w2."),
    (r"^(projector\.layers\.\d+)\.output_query\.LayerNorm\.", r"\1.mlp_ln."),
    # language model
    (r"^language_model\.model\.embed_tokens\.", "language_model.base_model.embedding."),
    (r"^language_model\.model\.norm\.", "language_model.base_model.dec_norm."),
    (r"^language_model\.model\.layers\.", "language_model.base_model.layers."),
    (r"\.self_attn\.q_proj\.", ".attn.in_proj.query."),
    (r"\.self_attn\.k_proj\.", ".attn.in_proj.key."),
    (r"\.self_attn\.v_proj\.", ".attn.in_proj.value."),
    (r"\.self_attn\.o_proj\.", ".attn.dense."),
    (r"\.mlp\.gate_proj\.", ".ff_sub_layer.wg."),
    (r"\.mlp\.up_proj\.", ".ff_sub_layer.w1."),
    (r"\.mlp\.down_proj\.", ".ff_sub_layer.w2."),
    (r"\.input_layernorm\.", ".ln."),
    (r"\.post_attention_layernorm\.", ".ff_ln."),
]


def hf_to_fms_name(name: str) -> str:
    """FMS name of one checkpoint tensor (LoRA A/B get unfused intermediate names)."""
    lora = _LORA_KEY.match(name)
    if lora:
        layer, proj, ab = lora.groups()
        return f"language_model.base_model.layers.{layer}.attn.in_proj.lora_{ab.lower()}_{proj}"
    for pattern, repl in _PREFIX_RULES + _RENAMES:
        name = re.sub(pattern, repl, name)
    return name


def _hf_to_fms_names(input_sd: Mapping[str, Any], **kwargs) -> Mapping[str, Any]:
    return {hf_to_fms_name(k): v for k, v in input_sd.items()}


# Tensors FMS fuses (QKV, gate+up, LoRA A of q and v) must arrive together; named here as in
# the checkpoint for the messages.
_FUSED_GROUPS = (
    [
        {
            f"attn.in_proj.query.{w}": f"self_attn.q_proj.{w}",
            f"attn.in_proj.key.{w}": f"self_attn.k_proj.{w}",
            f"attn.in_proj.value.{w}": f"self_attn.v_proj.{w}",
        }
        for w in ("weight", "bias")
    ]
    + [
        {f"ff_sub_layer.wg.{w}": f"mlp.gate_proj.{w}", f"ff_sub_layer.w1.{w}": f"mlp.up_proj.{w}"}
        for w in ("weight", "bias")
    ]
    + [
        {
            "attn.in_proj.lora_a_q": "self_attn.q_proj.lora_A",
            "attn.in_proj.lora_a_v": "self_attn.v_proj.lora_A",
        },
        {
            "attn.in_proj.lora_b_q": "self_attn.q_proj.lora_B",
            "attn.in_proj.lora_b_v": "self_attn.v_proj.lora_B",
        },
    ]
)
_LLM_LAYER = re.compile(r"^language_model\.base_model\.layers\.(\d+)\.(.+)$")
_HEAD = "language_model.head.weight"
_EMBEDDING = "language_model.base_model.embedding.weight"


@functools.lru_cache(maxsize=8)
def _checkpoint_shapes(config_json: str) -> dict[str, tuple[int, ...]]:
    """Shape of each tensor a checkpoint may hold, by its FMS name before fusion."""
    config = GraniteSpeechConfig(**json.loads(config_json))
    with torch.device("meta"):
        model = GraniteSpeech(config)
        text = Granite(config.text_config.updated(fused_weights=False))
    shapes = {
        name: tuple(t.shape)
        for name, t in model.state_dict().items()
        if not name.startswith("language_model.")
    }
    shapes.update({f"language_model.{n}": tuple(t.shape) for n, t in text.state_dict().items()})
    for name, module in model.named_modules():
        if isinstance(module, LoRAFusedQKV):
            q_dim, _, v_dim = module.splits
            for proj, dim in (("q", q_dim), ("v", v_dim)):
                shapes[f"{name}.lora_a_{proj}"] = (module.lora_rank, module.emb_dim)
                shapes[f"{name}.lora_b_{proj}"] = (dim, module.lora_rank)
    return shapes


def _check_tensors(
    input_sd: Mapping[str, Any],
    model_config: GraniteSpeechConfig | None = None,
    origin: Mapping[str, list[str]] | None = None,
    **kwargs,
) -> Mapping[str, Any]:
    """Names, shapes and fusion groups checked before any tensor is permuted or fused, and
    the head of a tied checkpoint dropped (FMS would only warn, or fail inside a fusion).

    origin: FMS name -> "file:key" of the tensors, for the messages (`load_model` has them).
    """
    if model_config is None:
        raise ValueError("the granite_speech checkpoint adapter needs model_config")
    shapes = _checkpoint_shapes(json.dumps(model_config.as_dict(), sort_keys=True))
    check_checkpoint_tensors(
        input_sd,
        shapes,
        origin,
        "is the checkpoint for another configuration, or is its LoRA adapter targeting "
        "modules other than q_proj/v_proj?",
    )
    layers: dict[str, set[str]] = {}
    for name in input_sd:
        match = _LLM_LAYER.match(name)
        if match:
            layers.setdefault(match.group(1), set()).add(match.group(2))
    for layer, parts in sorted(layers.items()):
        for group in _FUSED_GROUPS:
            present = [hf for fms, hf in group.items() if fms in parts]
            if present and len(present) < len(group):
                absent = [hf for fms, hf in group.items() if fms not in parts]
                raise ValueError(
                    f"LLM layer {layer} of the checkpoint has {present} but not {absent}; "
                    "these tensors are fused and must all be there"
                )
    if model_config.text_config.tie_heads and _HEAD in input_sd:
        # transformers ties by the top-level tie_word_embeddings; a head that equals the
        # embeddings (a checkpoint that stores both) is the tied one.
        if _EMBEDDING not in input_sd or not torch.equal(input_sd[_HEAD], input_sd[_EMBEDDING]):
            raise ValueError(
                "config.json ties lm_head to the input embeddings (tie_word_embeddings=true) "
                "but the checkpoint holds an lm_head.weight that differs from "
                "embed_tokens.weight; set tie_word_embeddings to false if the head is its own"
            )
        input_sd = {k: v for k, v in input_sd.items() if k != _HEAD}
    return input_sd


def missing_hint(missing: list[str]) -> str:
    """What a missing untied head means, for the messages about missing tensors."""
    if _HEAD not in missing:
        return ""
    return (
        "; config.json sets tie_word_embeddings=false (a separate lm_head) but the checkpoint "
        "has no lm_head.weight: set it to true if the head is the input embeddings"
    )


def _hf_to_fms_rope(
    input_sd: Mapping[str, Any], model_config: GraniteSpeechConfig | None = None, **kwargs
) -> Mapping[str, Any]:
    """Undo HF's rotate-half RoPE layout on query/key rows (and on LoRA B for queries)."""
    if model_config is None:
        # The permutation depends on the head size, which differs between variants.
        raise ValueError("hf_to_fms_rope needs model_config (the LLM head size)")
    head_dim = model_config.text_config.head_dim
    pattern = re.compile(
        r"language_model\.base_model\.layers\.\d+\.attn\.in_proj\."
        r"(query\.weight|key\.weight|query\.bias|key\.bias|lora_b_q)$"
    )
    out = {}
    for name, param in input_sd.items():
        if pattern.search(name):
            heads = param.size(0) // head_dim
            view = param.view(heads, 2, head_dim // 2, *param.shape[1:])
            param = view.transpose(1, 2).reshape(param.shape)
        out[name] = param
    return out


def _weight_fusion(input_sd: Mapping[str, Any], **kwargs) -> Mapping[str, Any]:
    sd = serialization._attn_unfused_to_fused_step(input_sd)
    sd = dict(serialization._mlp_glu_unfused_to_fused_adapter_step(sd))
    for name in [n for n in sd if n.endswith(".lora_a_q")]:
        prefix = name[: -len("lora_a_q")]
        sd[prefix + "lora_a.weight"] = torch.cat([sd.pop(name), sd.pop(prefix + "lora_a_v")])
    for name in [n for n in sd if re.search(r"\.lora_b_[qv]$", n)]:
        sd[name + ".weight"] = sd.pop(name)
    return sd


serialization.register_adapter_step(ARCHITECTURE, "hf_to_fms_names", _hf_to_fms_names)
serialization.register_adapter_step(ARCHITECTURE, "check_tensors", _check_tensors)
serialization.register_adapter_step(ARCHITECTURE, "hf_to_fms_rope", _hf_to_fms_rope)
serialization.register_adapter_step(ARCHITECTURE, "weight_fusion", _weight_fusion)
serialization.register_adapter(
    ARCHITECTURE,
    "hf",
    ["hf_to_fms_names", "check_tensors", "hf_to_fms_rope", "weight_fusion"],
)
