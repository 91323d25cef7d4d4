"""Hugging Face Granite Speech configs -> FMS: the config mapping and the `hf_pretrained` hook.

`fms.models.get_model("hf_pretrained", model_path=DIR)` works through the registry entries made
here (Granite Speech and Granite Speech Plus). The head is tied to the embeddings by the
top-level `tie_word_embeddings` of the checkpoint's config, as in transformers
(`text_config.tie_word_embeddings` is not read).

transformers is imported only when a config is read: `import granite_fms` does not import it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from fms.models.granite import GraniteConfig

from granite_fms.checks import is_int, is_number, token_ids
from granite_fms.files import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    check_fms_directory,
    read_json,
)
from granite_fms.fms_compat import after_import
from granite_fms.models.conformer import ConformerConfig
from granite_fms.models.granite_speech import ARCHITECTURE, GraniteSpeechConfig
from granite_fms.models.qformer import QFormerConfig

if TYPE_CHECKING:
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

_LORA_TARGETS = {"q_proj", "v_proj"}

# transformers model_type -> architecture name, for both families this package loads.
HF_ARCHITECTURES = {
    "granite_speech": "GraniteSpeechForConditionalGeneration",
    "granite_speech_plus": "GraniteSpeechPlusForConditionalGeneration",
}


def read_hf_config(model_dir: str | Path) -> PretrainedConfig:
    """The transformers config of a Granite Speech (or Plus) checkpoint directory."""
    model_dir = Path(model_dir)
    path = model_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"{model_dir} has no config.json: not a Hugging Face checkpoint directory")
    model_type = read_json(path).get("model_type")
    if model_type not in HF_ARCHITECTURES:
        raise ValueError(
            f"{path} is for model_type {model_type!r}, not Granite Speech "
            f"({' or '.join(map(repr, HF_ARCHITECTURES))})"
        )
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir, local_files_only=True)


def read_eos_token_ids(model_dir: str | Path) -> tuple[int, ...] | None:
    """The EOS ids of `generation_config.json` (one or several), or None if it names none."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return None
    try:
        return token_ids(f"{path}: eos_token_id", read_json(path).get("eos_token_id"))
    except TypeError as e:
        raise ValueError(str(e)) from e


def read_lora_config(model_dir: str | Path) -> dict | None:
    """`{"r", "lora_alpha"}` of the peft adapter beside the weights, or None if there is none."""
    model_dir = Path(model_dir)
    cfg_path, weights = model_dir / ADAPTER_CONFIG, model_dir / ADAPTER_WEIGHTS
    if not cfg_path.exists():
        if weights.exists():
            raise ValueError(f"{weights} exists but {cfg_path} is missing")
        return None
    if not weights.exists():
        raise ValueError(f"{cfg_path} exists but the adapter weights {weights} are missing")
    cfg = read_json(cfg_path)
    problems = []
    for key, valid in (("r", is_int), ("lora_alpha", is_number)):
        if not valid(cfg.get(key)):
            problems.append(f"{key} {cfg.get(key)!r} (a number is needed)")
    if cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')!r} (only LORA)")
    targets = cfg.get("target_modules") or []
    targets = set(targets) if isinstance(targets, list) else {targets}
    if not targets or not targets <= _LORA_TARGETS:
        problems.append(f"target_modules {sorted(targets)} (only q_proj and v_proj)")
    for flag in ("use_dora", "use_rslora"):
        if cfg.get(flag):
            problems.append(f"{flag}=true")
    for pattern in ("rank_pattern", "alpha_pattern"):
        if cfg.get(pattern):
            problems.append(f"per-module {pattern}")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg['bias']!r}")
    if problems:
        raise ValueError(f"unsupported LoRA adapter in {cfg_path}: " + "; ".join(problems))
    return {"r": int(cfg["r"]), "lora_alpha": float(cfg["lora_alpha"])}


# transformers name -> FMS name of the settings that map one to one, per sub-config.
# fmt: off
ENCODER_NAMES = dict(input_dim="input_dim", num_layers="nlayers", hidden_dim="emb_dim",
                     num_heads="nheads", dim_head="head_dim", output_dim="output_dim",
                     context_size="context_size", max_pos_emb="max_pos_emb",
                     conv_kernel_size="conv_kernel_size",
                     conv_expansion_factor="conv_expansion_factor")
PROJECTOR_NAMES = dict(hidden_size="emb_dim", encoder_hidden_size="encoder_dim",
                       num_hidden_layers="nlayers", num_attention_heads="nheads",
                       cross_attention_frequency="cross_attention_frequency",
                       layer_norm_eps="norm_eps")
# fmt: on


def renamed(config, names: dict[str, str]) -> dict:
    """The settings `names` lists of a transformers config, under their FMS names."""
    return {ours: getattr(config, theirs) for theirs, ours in names.items()}


def fms_config_from_hf(
    hf_config: PretrainedConfig, model_dir: str | Path | None = None
) -> GraniteSpeechConfig:
    """Map a transformers `GraniteSpeechConfig` or `GraniteSpeechPlusConfig` (+ the adapter
    config in model_dir) to FMS. Without model_dir (a config built in memory) the mapping has
    no LoRA: the caller adds its own (`config.updated(lora_rank=...)`)."""
    text = hf_config.text_config
    if text.model_type != "granite":
        raise ValueError(
            f"text_config.model_type {text.model_type!r} is not supported (only 'granite')"
        )
    enc, proj = hf_config.encoder_config, hf_config.projector_config
    if getattr(proj, "use_qformer_text_input", False):
        raise ValueError("projector_config.use_qformer_text_input=True is not supported")
    from fms.models.hf.config_utils import param_builders as pb

    text_params = pb.build_granite_params(text)
    # transformers ties lm_head by the top-level flag; the text config's own is not read.
    tie = bool(hf_config.tie_word_embeddings)
    if text_params["tie_heads"] != tie:
        logger.info(
            "tie_word_embeddings is %s at the top level and %s in text_config; transformers "
            "follows the top level, and so does this loader",
            tie,
            text_params["tie_heads"],
        )
    text_params.update(
        pad_id=text.pad_token_id if text.pad_token_id is not None else -1, tie_heads=tie
    )
    lora = read_lora_config(model_dir) if model_dir is not None else None
    if model_dir is not None and lora is None and getattr(hf_config, "has_lora_adapter", False):
        logger.warning(
            "config says has_lora_adapter but %s has no %s/%s: loading without LoRA, which "
            "degrades speech requests",
            model_dir,
            ADAPTER_CONFIG,
            ADAPTER_WEIGHTS,
        )
    return GraniteSpeechConfig(
        encoder_config=ConformerConfig(
            **renamed(enc, ENCODER_NAMES),
            hidden_grow_factor=float(enc.feedforward_mult),
            cat_hidden_layers=tuple(getattr(enc, "cat_hidden_layers", None) or ()),
        ),
        projector_config=QFormerConfig(
            **renamed(proj, PROJECTOR_NAMES),
            hidden_grow_factor=proj.intermediate_size / proj.hidden_size,
            window_size=hf_config.window_size,
            downsample_rate=hf_config.downsample_rate,
            llm_dim=text.hidden_size,
        ),
        text_config=GraniteConfig(**text_params),
        audio_token_index=hf_config.audio_token_index,
        lora_rank=lora["r"] if lora else 0,
        lora_alpha=lora["lora_alpha"] if lora else 0.0,
    )


def _build_params_for_get_model(hf_config: PretrainedConfig) -> dict:
    """Param builder for FMS's `hf_pretrained` registry.

    It runs before FMS opens the weight files, so the directory is checked here first.
    """
    model_dir = Path(hf_config._name_or_path) if hf_config._name_or_path else None
    if model_dir is not None and not model_dir.is_dir():
        model_dir = None
    if model_dir is not None:
        check_fms_directory(model_dir)
    config = fms_config_from_hf(hf_config, model_dir)
    return {k: getattr(config, k) for k in config.__dataclass_fields__}


def _register_hf_pretrained(config_utils) -> None:
    registry = config_utils._FMS_MODEL_CONFIG_REGISTRY
    for hf_arch in HF_ARCHITECTURES.values():
        previous = registry.model_arch_mappings.get(hf_arch)
        if previous not in (None, ARCHITECTURE):
            logger.warning(
                "get_model('hf_pretrained') maps %s to FMS architecture %r; granite_fms replaces "
                "that with its own %r",
                hf_arch,
                previous,
                ARCHITECTURE,
            )
        registry.register_model_arch_info(hf_arch, ARCHITECTURE, _build_params_for_get_model)


after_import("fms.models.hf.config_utils", _register_hf_pretrained)


__all__ = [
    "HF_ARCHITECTURES",
    "fms_config_from_hf",
    "read_eos_token_ids",
    "read_hf_config",
    "read_lora_config",
]
