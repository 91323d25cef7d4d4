"""Hugging Face Granite Speech checkpoints -> FMS: config mapping and an index-following loader.

`fms.models.get_model("hf_pretrained", model_path=DIR)` works through the registry entries made
here (Granite Speech and Granite Speech Plus). FMS's loader globs every `*.safetensors` in DIR;
`load_model` instead follows `model.safetensors.index.json`, which matters for repositories that
keep orphaned old shards (the public granite-speech-3.3-2b does), and reports missing, extra or
misshapen tensors with the file they came from.

The head is tied to the embeddings by the top-level `tie_word_embeddings` of the checkpoint's
config, as in transformers (`text_config.tie_word_embeddings` is not read); a checkpoint whose
tensors contradict that setting is refused.

transformers is imported only when a config is read: `import granite_fms` does not import it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from fms.models.granite import GraniteConfig
from fms.utils import serialization
from safetensors import SafetensorError, safe_open

from granite_fms.conformer import ConformerConfig
from granite_fms.distributed import check_strategy, load_sharded, strategy_from_name
from granite_fms.granite_speech import (
    ARCHITECTURE,
    GraniteSpeech,
    GraniteSpeechConfig,
    hf_to_fms_name,
    missing_hint,
)
from granite_fms.qformer import QFormerConfig

if TYPE_CHECKING:
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LORA_TARGETS = {"q_proj", "v_proj"}
# transformers model_type -> architecture name, for both families this package loads.
HF_ARCHITECTURES = {
    "granite_speech": "GraniteSpeechForConditionalGeneration",
    "granite_speech_plus": "GraniteSpeechPlusForConditionalGeneration",
}


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file; a ValueError naming the file if it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


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
    for key, kind in (("r", int), ("lora_alpha", int | float)):
        if not isinstance(cfg.get(key), kind) or isinstance(cfg.get(key), bool):
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


def weight_files(model_dir: str | Path) -> list[Path]:
    """Base weight files: those named by the safetensors index, else `model.safetensors`."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_FILE
    if index.exists():
        files = sorted({model_dir / name for name in _weight_map(index).values()})
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


def _weight_map(index: Path) -> dict[str, str]:
    weight_map = read_json(index).get("weight_map")
    if not weight_map or not isinstance(weight_map, dict):
        raise ValueError(f"{index} has no weight_map (tensor name -> shard file)")
    if not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index}: weight_map values must be shard file names")
    return weight_map


def check_fms_directory(model_dir: str | Path) -> None:
    """Refuse a directory that `fms.models.get_model(..., source="hf")` would load wrongly.

    FMS reads every `*.safetensors` in it: shards its index does not list would be mixed in,
    and a truncated file fails deep inside safetensors.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return
    index = model_dir / INDEX_FILE
    if index.exists():
        listed = set(_weight_map(index).values()) | {ADAPTER_WEIGHTS}
        orphans = sorted(p.name for p in model_dir.glob("*.safetensors") if p.name not in listed)
        if orphans:
            raise ValueError(
                f"{model_dir} holds safetensors files that {INDEX_FILE} does not list: {orphans}. "
                "fms.models.get_model loads every *.safetensors file; use "
                "granite_fms.load_model(path), which follows the index."
            )
    for path in sorted(model_dir.glob("*.safetensors")):
        with _open_safetensors(path):  # reads the header only
            pass


def _open_safetensors(path: Path, device: str = "cpu"):
    try:
        return safe_open(str(path), framework="pt", device=device)
    except SafetensorError as e:
        raise ValueError(
            f"{path} is not a readable safetensors file ({e}); is it truncated or incomplete?"
        ) from e


def fms_config_from_hf(
    hf_config: PretrainedConfig, model_dir: str | Path | None = None
) -> GraniteSpeechConfig:
    """Map a transformers `GraniteSpeechConfig` or `GraniteSpeechPlusConfig` (+ the adapter
    config in model_dir) to FMS."""
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
            cat_hidden_layers=tuple(getattr(enc, "cat_hidden_layers", None) or ()),
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


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `callback(module)` right after the module `name` is first imported.

    FMS's `hf_pretrained` registry (`fms.models.hf.config_utils`) imports transformers, so it is
    filled when FMS imports it (on the first `get_model("hf_pretrained", ...)`), not here.
    """

    def __init__(self, name: str, callback):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            self.callback(module)

        spec.loader.exec_module = exec_module
        return spec


_CONFIG_UTILS = "fms.models.hf.config_utils"
if _CONFIG_UTILS in sys.modules:
    _register_hf_pretrained(sys.modules[_CONFIG_UTILS])
else:
    sys.meta_path.insert(0, _AfterImport(_CONFIG_UTILS, _register_hf_pretrained))


def _read_tensors(
    files: list[Path], device: torch.device, dtype: torch.dtype | None
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Raw tensors by checkpoint name, and the "file:key" of each by FMS name (before fusion)."""
    tensors: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    origin: dict[str, list[str]] = {}
    for path in files:
        with _open_safetensors(path, str(device)) as f:
            for key in f.keys():
                if key in source:
                    raise ValueError(f"tensor {key!r} is in both {source[key]} and {path.name}")
                t = f.get_tensor(key)
                if dtype is not None and t.is_floating_point():
                    t = t.to(dtype)
                tensors[key], source[key] = t, path.name
                origin.setdefault(hf_to_fms_name(key), []).append(f"{path.name}:{key}")
    return tensors, origin


def load_model(
    model_dir: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    with_adapter: bool = True,
    distributed_strategy: str | None = None,
) -> GraniteSpeech:
    """Load a Hugging Face Granite Speech (or Plus) checkpoint directory into `GraniteSpeech`.

    Reads `config.json`, the base weights named by the safetensors index (or
    `model.safetensors`), and the peft LoRA adapter if present (`with_adapter=False` skips
    it). `dtype=None` keeps the checkpoint's dtype. `distributed_strategy="tp"` (under torchrun,
    see `granite_fms.distributed`) shards the LLM over the default process group; each rank
    reads the checkpoint on the CPU and keeps its shard on `device`. Returns the model in eval
    mode.
    """
    model_dir = Path(model_dir)
    device = torch.device(device)
    strategy = strategy_from_name(distributed_strategy)
    hf_config = read_hf_config(model_dir)
    config = fms_config_from_hf(hf_config, model_dir if with_adapter else None)
    check_strategy(strategy, config.text_config)  # before reading any weights
    files = weight_files(model_dir)
    if config.lora_rank:
        files.append(model_dir / ADAPTER_WEIGHTS)
    read_device = device if distributed_strategy is None else torch.device("cpu")
    raw, origin = _read_tensors(files, read_device, dtype)
    state = serialization.get_adapted(
        ARCHITECTURE, "hf", raw, {"model_config": config, "origin": origin}
    )

    with torch.device("meta"):
        model = GraniteSpeech(config)
    expected = model.state_dict()
    if config.text_config.tie_heads:
        expected.pop("language_model.head.weight")
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(
            f"checkpoint in {model_dir} lacks tensors for {missing} "
            f"(read {[f.name for f in files]}){missing_hint(missing)}"
        )
    if distributed_strategy is None:
        model.load_state_dict(state, strict=False, assign=True)
    else:  # shapes were checked against the full model; now each rank takes its shards
        with torch.device("meta"):
            model = GraniteSpeech(config, distributed_strategy=strategy)
        load_sharded(model, dict(state), device)
    model.post_init()
    return model.eval()


__all__ = [
    "HF_ARCHITECTURES",
    "check_fms_directory",
    "fms_config_from_hf",
    "load_model",
    "read_hf_config",
    "read_json",
    "read_lora_config",
    "weight_files",
]
