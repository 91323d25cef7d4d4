"""Hugging Face Granite Speech checkpoints -> `GraniteSpeech`: an index-following loader.

FMS's loader globs every `*.safetensors` in a directory; `load_model` instead follows
`model.safetensors.index.json`, which matters for repositories that keep orphaned old shards
(the public granite-speech-3.3-2b does), and reports missing, extra or misshapen tensors with
the file they came from. A checkpoint whose tensors contradict its `tie_word_embeddings` is
refused.
"""

from collections.abc import MutableMapping
from pathlib import Path

import torch
import torch.distributed as dist
from fms.utils import serialization
from torch import nn

from granite_fms.files import ADAPTER_WEIGHTS, open_safetensors, weight_files
from granite_fms.hf import granite_speech5
from granite_fms.hf.config import fms_config_from_hf, read_hf_config
from granite_fms.models.granite_speech import (
    ARCHITECTURE,
    GraniteSpeech,
    hf_to_fms_name,
    missing_hint,
)
from granite_fms.models.granite_speech5 import GraniteSpeech5
from granite_fms.models.tp import check_strategy, strategy_from_name


def _read_tensors(
    files: list[Path], device: torch.device, dtype: torch.dtype | None
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Raw tensors by checkpoint name, and the "file:key" of each by FMS name (before fusion)."""
    tensors: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    origin: dict[str, list[str]] = {}
    for path in files:
        with open_safetensors(path, str(device)) as f:
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
) -> GraniteSpeech | GraniteSpeech5:
    """Load a Hugging Face Granite Speech (or Plus) checkpoint directory into `GraniteSpeech`,
    or a Granite Speech 5.0 one into `GraniteSpeech5` (`granite_fms.hf.granite_speech5`).

    Reads `config.json`, the base weights named by the safetensors index (or
    `model.safetensors`), and the peft LoRA adapter if present (`with_adapter=False` skips
    it). `dtype=None` keeps the checkpoint's dtype. `distributed_strategy="tp"` (under
    torchrun, see `granite_fms.app.ranks.init_distributed`) shards the LLM over the default
    process group; each rank reads the checkpoint on the CPU and keeps its shard on `device`.
    Returns the model in eval mode.
    """
    model_dir = Path(model_dir)
    device = torch.device(device)
    # Granite Speech 5.0 (a CTC encoder, no LLM) has a loader of its own.
    if granite_speech5.is_granite_speech5(model_dir):
        if distributed_strategy is not None:
            raise ValueError(
                "distributed_strategy shards the LLM of Granite Speech 3.x/4.x; Granite Speech "
                "5.0 has none (run one whole model per rank instead)"
            )
        return granite_speech5.load_model(model_dir, dtype=dtype, device=device)
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


def load_sharded(
    model: nn.Module, state: MutableMapping[str, torch.Tensor], device: torch.device
) -> None:
    """Copy full FMS-named tensors into a model built on meta with TensorParallelStrategy.

    FMS's loader shards each tensor that lies under a TP module (its `load_weights`) and copies
    the rest whole; it consumes `state`, one layer at a time, onto `device`.
    """
    serialization.load_state_dict_into_model(
        model,
        state,
        architecture=ARCHITECTURE,
        source="fms",  # already adapted: no adapter step runs again
        distributed_strategy="tp",
        initial_device=device,
        rank=dist.get_rank(),
    )


__all__ = ["load_model", "load_sharded"]
