"""Hugging Face Granite Speech checkpoints -> FMS: config mapping and an index-following loader.

`fms.models.get_model("hf_pretrained", model_path=DIR)` works through the registry entry made
here. FMS's loader globs every `*.safetensors` in DIR; `load_model` instead follows
`model.safetensors.index.json`, which matters for repositories that keep orphaned old shards
(the public granite-speech-3.3-2b does), and reports missing, extra or misshapen tensors with
the file they came from.
"""

import json
import logging
import re
from pathlib import Path

import torch
from fms.models.granite import GraniteConfig
from fms.models.hf.config_utils import _FMS_MODEL_CONFIG_REGISTRY
from fms.models.hf.config_utils import param_builders as pb
from fms.utils import serialization
from safetensors import safe_open
from transformers import AutoConfig, PretrainedConfig

from granite_fms.conformer import ConformerConfig
from granite_fms.distributed import check_strategy, load_sharded, strategy_from_name
from granite_fms.granite_speech import GraniteSpeech, GraniteSpeechConfig, hf_to_fms_name
from granite_fms.qformer import QFormerConfig

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LORA_TARGETS = {"q_proj", "v_proj"}


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
    cfg = json.loads(cfg_path.read_text())
    problems = []
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


def weight_files(model_dir: str | Path) -> list[Path]:
    """Base weight files: those named by the safetensors index, else `model.safetensors`."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not weight_map:
            raise ValueError(f"{index} has no weight_map")
        files = sorted({model_dir / name for name in weight_map.values()})
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise ValueError(f"{index} names shards that do not exist: {missing}")
        return files
    single = model_dir / SINGLE_FILE
    if single.exists():
        return [single]
    found = sorted(p.name for p in model_dir.glob("*")) if model_dir.is_dir() else []
    raise ValueError(
        f"no {INDEX_FILE} or {SINGLE_FILE} in {model_dir} (found: {found or 'nothing'})"
    )


def _unindexed_shards(model_dir: Path) -> list[str]:
    index = model_dir / INDEX_FILE
    if not index.exists():
        return []
    listed = set(json.loads(index.read_text()).get("weight_map", {}).values())
    return sorted(
        p.name
        for p in model_dir.glob("*.safetensors")
        if p.name not in listed and p.name != ADAPTER_WEIGHTS
    )


def fms_config_from_hf(
    hf_config: PretrainedConfig, model_dir: str | Path | None = None
) -> GraniteSpeechConfig:
    """Map a transformers `GraniteSpeechConfig` (+ the adapter config in model_dir) to FMS."""
    text = hf_config.text_config
    if text.model_type != "granite":
        raise ValueError(
            f"text_config.model_type {text.model_type!r} is not supported (only 'granite')"
        )
    enc, proj = hf_config.encoder_config, hf_config.projector_config
    if getattr(proj, "use_qformer_text_input", False):
        raise ValueError("projector_config.use_qformer_text_input=True is not supported")
    text_params = pb.build_granite_params(text)
    text_params.update(pad_id=text.pad_token_id if text.pad_token_id is not None else -1)
    lora = read_lora_config(model_dir) if model_dir is not None else None
    if lora is None and getattr(hf_config, "has_lora_adapter", False):
        logger.warning(
            "config says has_lora_adapter but no %s/%s found: loading without LoRA, which "
            "degrades speech requests",
            ADAPTER_CONFIG,
            ADAPTER_WEIGHTS,
        )
    return GraniteSpeechConfig(
        encoder_config=ConformerConfig(
            input_dim=enc.input_dim,
            emb_dim=enc.hidden_dim,
            nlayers=enc.num_layers,
            nheads=enc.num_heads,
            head_dim=enc.dim_head,
            output_dim=enc.output_dim,
            context_size=enc.context_size,
            max_pos_emb=enc.max_pos_emb,
            conv_kernel_size=enc.conv_kernel_size,
            conv_expansion_factor=enc.conv_expansion_factor,
            hidden_grow_factor=float(enc.feedforward_mult),
        ),
        projector_config=QFormerConfig(
            emb_dim=proj.hidden_size,
            encoder_dim=proj.encoder_hidden_size,
            nlayers=proj.num_hidden_layers,
            nheads=proj.num_attention_heads,
            hidden_grow_factor=proj.intermediate_size / proj.hidden_size,
            cross_attention_frequency=proj.cross_attention_frequency,
            norm_eps=proj.layer_norm_eps,
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
    """Param builder for FMS's `hf_pretrained` registry (FMS globs every *.safetensors)."""
    model_dir = Path(hf_config._name_or_path) if hf_config._name_or_path else None
    if model_dir is not None and not model_dir.is_dir():
        model_dir = None
    if model_dir is not None:
        orphans = _unindexed_shards(model_dir)
        if orphans:
            raise ValueError(
                f"{model_dir} holds safetensors files that {INDEX_FILE} does not list: {orphans}. "
                "fms.models.get_model('hf_pretrained') loads every *.safetensors file; use "
                "granite_fms.load_model(path), which follows the index."
            )
    config = fms_config_from_hf(hf_config, model_dir)
    return {k: getattr(config, k) for k in config.__dataclass_fields__}


_FMS_MODEL_CONFIG_REGISTRY.register_model_arch_info(
    "GraniteSpeechForConditionalGeneration", "granite_speech", _build_params_for_get_model
)


def _fused_name(fms_name: str) -> str:
    name = re.sub(r"attn\.in_proj\.(query|key|value)\.", "attn.in_proj.qkv_fused.", fms_name)
    name = re.sub(r"ff_sub_layer\.(wg|w1)\.", "ff_sub_layer.wg1_fused.", name)
    return re.sub(r"in_proj\.lora_a_[qv]$", "in_proj.lora_a.weight", name)


def _read_tensors(
    files: list[Path], device: torch.device, dtype: torch.dtype | None
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    tensors: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    origin: dict[str, list[str]] = {}
    for path in files:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            for key in f.keys():
                if key in source:
                    raise ValueError(f"tensor {key!r} is in both {source[key]} and {path.name}")
                t = f.get_tensor(key)
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                tensors[key], source[key] = t, path.name
                origin.setdefault(_fused_name(hf_to_fms_name(key)), []).append(f"{path.name}:{key}")
    return tensors, origin


def load_model(
    model_dir: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    with_adapter: bool = True,
    distributed_strategy: str | None = None,
) -> GraniteSpeech:
    """Load a Hugging Face Granite Speech checkpoint directory into an FMS `GraniteSpeech`.

    Reads `config.json`, the base weights named by the safetensors index (or
    `model.safetensors`), and the peft LoRA adapter if present (`with_adapter=False` skips
    it). `dtype=None` keeps the checkpoint's dtype. `distributed_strategy="tp"` (under torchrun,
    see `granite_fms.distributed`) shards the LLM over the default process group; each rank
    reads the checkpoint on the CPU and keeps its shard on `device`. Returns the model in eval
    mode.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise ValueError(f"{model_dir} has no config.json: not a Hugging Face checkpoint directory")
    device = torch.device(device)
    strategy = strategy_from_name(distributed_strategy)
    hf_config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    if hf_config.model_type != "granite_speech":
        raise ValueError(
            f"{model_dir}/config.json is for model_type {hf_config.model_type!r}, "
            "not Granite Speech ('granite_speech')"
        )
    config = fms_config_from_hf(hf_config, model_dir if with_adapter else None)
    check_strategy(strategy, config.text_config)  # before reading any weights
    files = weight_files(model_dir)
    if config.lora_rank:
        files.append(model_dir / ADAPTER_WEIGHTS)
    read_device = device if distributed_strategy is None else torch.device("cpu")
    raw, origin = _read_tensors(files, read_device, dtype)
    state = serialization.get_adapted("granite_speech", "hf", raw, {"model_config": config})

    with torch.device("meta"):
        model = GraniteSpeech(config)
    expected = model.state_dict()
    if config.text_config.tie_heads:
        expected.pop("language_model.head.weight")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(
            f"checkpoint in {model_dir} lacks tensors for {missing} "
            f"(read {[f.name for f in files]})"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"shape mismatch for {name}: the model expects {tuple(expected[name].shape)}, "
                f"the checkpoint has {tuple(tensor.shape)} (from {origin.get(name, ['?'])})"
            )
    if distributed_strategy is None:
        model.load_state_dict(state, strict=False, assign=True)
    else:  # checked above against the full shapes; now each rank takes its shards
        with torch.device("meta"):
            model = GraniteSpeech(config, distributed_strategy=strategy)
        load_sharded(model, dict(state), device)
    model.post_init()
    return model.eval()


__all__ = ["fms_config_from_hf", "load_model", "read_lora_config", "weight_files"]
