"""Hugging Face Granite Speech 5.0 checkpoints -> FMS: config mapping, `hf_pretrained`, loader.

A directory written by `transformers.GraniteSpeech5ForCTC.save_pretrained` (config.json
`model_type` "granite_speech5_ctc") loads with `granite_fms.load_model(DIR)` (which dispatches
here on the model type) and with `fms.models.get_model("hf_pretrained", model_path=DIR)`
(through the registry entry made here). Like transformers, the CTC head is tied to the
encoder's `out` by the top-level `tie_word_embeddings`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from fms.utils import serialization

from granite_fms.files import check_fms_directory, open_safetensors, read_json, weight_files
from granite_fms.fms_compat import after_import
from granite_fms.hf.config import renamed
from granite_fms.models.granite_speech5 import (
    ARCHITECTURE,
    GraniteSpeech5,
    GraniteSpeech5Config,
    hf_to_fms_name,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

MODEL_TYPE = "granite_speech5_ctc"
HF_ARCHITECTURE = "GraniteSpeech5ForCTC"
# transformers keeps the conv modules' BatchNorm in fp32 when it loads in fp16 or bf16
# (`_keep_in_fp32_modules_strict`); so does `load_model`.
KEEP_FP32 = ".conv.norm."


def is_granite_speech5(model_dir: str | Path) -> bool:
    """Whether the directory's config.json is a Granite Speech 5.0 (CTC) checkpoint's."""
    path = Path(model_dir) / "config.json"
    return path.is_file() and read_json(path).get("model_type") == MODEL_TYPE


def read_hf_config(model_dir: str | Path) -> PretrainedConfig:
    """The transformers `GraniteSpeech5CTCConfig` of a checkpoint directory."""
    if not is_granite_speech5(model_dir):
        raise ValueError(f"{Path(model_dir) / 'config.json'} is not a {MODEL_TYPE!r} config")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir, local_files_only=True)


# transformers encoder-config name -> `GraniteSpeech5Config` name of the settings that map one
# to one.
# fmt: off
ENCODER_NAMES = dict(num_mel_bins="n_mels", hidden_size="emb_dim", num_hidden_layers="nlayers",
                     num_attention_heads="nheads", head_dim="head_dim",
                     context_size="context_size", max_position_embeddings="max_pos_emb",
                     conv_kernel_size="conv_kernel_size",
                     conv_expansion_factor="conv_expansion_factor")
# fmt: on


def fms_config_from_hf(hf_config: PretrainedConfig) -> GraniteSpeech5Config:
    """Map a transformers `GraniteSpeech5CTCConfig` to FMS; refuse what FMS cannot build."""
    enc = hf_config.encoder_config
    problems = []
    if enc.vocab_size != hf_config.vocab_size:
        problems.append(f"encoder vocab_size {enc.vocab_size} != vocab_size {hf_config.vocab_size}")
    if enc.hidden_act != "silu":
        problems.append(f"hidden_act {enc.hidden_act!r} (only 'silu')")
    if not enc.attention_bias:
        problems.append("attention_bias=false (the feed-forwards have biases)")
    if enc.num_key_value_heads != enc.num_attention_heads:
        problems.append(
            f"num_key_value_heads {enc.num_key_value_heads} != num_attention_heads "
            f"{enc.num_attention_heads}"
        )
    if hf_config.pad_token_id is None:
        problems.append("pad_token_id is null (it is the CTC blank)")
    if problems:
        raise ValueError("unsupported Granite Speech 5.0 config: " + "; ".join(problems))
    return GraniteSpeech5Config(
        **renamed(enc, ENCODER_NAMES),
        hidden_grow_factor=enc.intermediate_size / enc.hidden_size,
        subsample_layers=tuple(enc.subsample_layers),
        src_vocab_size=hf_config.vocab_size,
        blank_id=hf_config.pad_token_id,
        tie_heads=bool(hf_config.tie_word_embeddings),
    )


def _build_params_for_get_model(hf_config: PretrainedConfig) -> dict:
    """Param builder for FMS's `hf_pretrained` registry; checks the directory FMS will read."""
    model_dir = Path(hf_config._name_or_path) if hf_config._name_or_path else None
    if model_dir is not None and model_dir.is_dir():
        check_fms_directory(model_dir)
    config = fms_config_from_hf(hf_config)
    return {k: getattr(config, k) for k in config.__dataclass_fields__}


def _register_hf_pretrained(config_utils) -> None:
    config_utils._FMS_MODEL_CONFIG_REGISTRY.register_model_arch_info(
        HF_ARCHITECTURE, ARCHITECTURE, _build_params_for_get_model
    )


after_import("fms.models.hf.config_utils", _register_hf_pretrained)


def load_model(
    model_dir: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
) -> GraniteSpeech5:
    """Load a Granite Speech 5.0 checkpoint directory into `GraniteSpeech5` (eval mode).

    Reads config.json and the weights named by the safetensors index (or `model.safetensors`);
    `dtype=None` keeps the checkpoint's dtype; in fp16 or bf16 the BatchNorms stay fp32, as
    transformers loads them. Missing, extra or misshapen tensors are a ValueError naming the
    file they came from.
    """
    model_dir = Path(model_dir)
    config = fms_config_from_hf(read_hf_config(model_dir))
    files = weight_files(model_dir)
    raw: dict[str, torch.Tensor] = {}
    origin: dict[str, list[str]] = {}
    for path in files:
        with open_safetensors(path, str(torch.device(device))) as f:
            for key in f.keys():
                if key in raw:
                    raise ValueError(f"tensor {key!r} is in more than one of {files}")
                raw[key] = _cast(key, f.get_tensor(key), dtype)
                origin.setdefault(hf_to_fms_name(key), []).append(f"{path.name}:{key}")
    state = serialization.get_adapted(
        ARCHITECTURE, "hf", raw, {"model_config": config, "origin": origin}
    )
    with torch.device("meta"):
        model = GraniteSpeech5(config)
    expected = set(model.state_dict())
    if config.tie_heads:
        expected -= {"head.weight", "head.bias"}
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(
            f"checkpoint in {model_dir} lacks tensors for {missing} (read "
            f"{[f.name for f in files]})"
        )
    model.load_state_dict(state, strict=False, assign=True)
    model.post_init()
    return model.eval()


def _cast(key: str, t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is None or not t.is_floating_point():
        return t
    if KEEP_FP32 in key and dtype in (torch.float16, torch.bfloat16):
        return t.to(torch.float32)
    return t.to(dtype)


__all__ = [
    "HF_ARCHITECTURE",
    "MODEL_TYPE",
    "fms_config_from_hf",
    "is_granite_speech5",
    "load_model",
    "read_hf_config",
]
