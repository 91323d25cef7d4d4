"""Hugging Face checkpoints -> FMS: config mapping, the `hf_pretrained` hook, the loader."""

from granite_fms.hf.config import fms_config_from_hf
from granite_fms.hf.loader import load_model

__all__ = ["fms_config_from_hf", "load_model"]
