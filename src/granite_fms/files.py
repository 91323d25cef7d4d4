"""Checkpoint files: JSON configs, the safetensors index and shards, each read with a clear error.

Nothing here knows an architecture: the loaders (`granite_fms.hf`) and FMS's `get_model`
(through `granite_fms.fms_compat`) use these to find and check the files of a checkpoint
directory before any tensor is read.
"""

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


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


def weight_files(model_dir: str | Path) -> list[Path]:
    """Base weight files: those named by the safetensors index, else `model.safetensors`."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_FILE
    if index.exists():
        files = sorted({model_dir / name for name in weight_map(index).values()})
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


def weight_map(index: Path) -> dict[str, str]:
    """Tensor name -> shard file of a safetensors index."""
    mapping = read_json(index).get("weight_map")
    if not mapping or not isinstance(mapping, dict):
        raise ValueError(f"{index} has no weight_map (tensor name -> shard file)")
    if not all(isinstance(v, str) for v in mapping.values()):
        raise ValueError(f"{index}: weight_map values must be shard file names")
    return mapping


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
        listed = set(weight_map(index).values()) | {ADAPTER_WEIGHTS}
        orphans = sorted(p.name for p in model_dir.glob("*.safetensors") if p.name not in listed)
        if orphans:
            raise ValueError(
                f"{model_dir} holds safetensors files that {INDEX_FILE} does not list: {orphans}. "
                "fms.models.get_model loads every *.safetensors file; use "
                "granite_fms.load_model(path), which follows the index."
            )
    for path in sorted(model_dir.glob("*.safetensors")):
        with open_safetensors(path):  # reads the header only
            pass


def open_safetensors(path: Path, device: str = "cpu"):
    """`safe_open` with a ValueError naming the file for a truncated or foreign one."""
    try:
        return safe_open(str(path), framework="pt", device=device)
    except SafetensorError as e:
        raise ValueError(
            f"{path} is not a readable safetensors file ({e}); is it truncated or incomplete?"
        ) from e


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "INDEX_FILE",
    "SINGLE_FILE",
    "check_fms_directory",
    "open_safetensors",
    "read_json",
    "weight_files",
    "weight_map",
]
