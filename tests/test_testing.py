"""`granite_fms.testing` configs of the registered variants; what `import granite_fms` loads."""

import os
import subprocess
import sys

import pytest

from granite_fms.hf.config import fms_config_from_hf
from granite_fms.testing import hf_config_from_fms, variant_config


def _shapes(config) -> dict:
    """as_dict without the activation's name (FMS says "swish", transformers "silu": both SiLU)."""
    d = config.as_dict()
    d["text_config"] = {k: v for k, v in d["text_config"].items() if k != "activation_fn"}
    return d


@pytest.mark.parametrize("variant", ["tiny", "3.3-2b", "3.3-8b"])
def test_variant_hf_config_maps_back_to_the_registered_variant(variant):
    config = variant_config(variant)
    hf = hf_config_from_fms(config)
    assert hf.has_lora_adapter == (config.lora_rank > 0)
    # LoRA rank and alpha come from the peft adapter beside the weights, not from config.json.
    back = fms_config_from_hf(hf).updated(lora_rank=config.lora_rank, lora_alpha=config.lora_alpha)
    assert _shapes(back) == _shapes(config)


def test_hf_config_from_fms_rejects_shapes_transformers_cannot_express():
    config = variant_config("tiny")
    wide_heads = config.updated(text_config=config.text_config.updated(head_dim=32))
    with pytest.raises(ValueError, match="head_dim"):
        hf_config_from_fms(wide_heads)


def test_import_leaves_transformers_unloaded_and_registers_hf_pretrained_when_fms_needs_it():
    code = (
        "import sys, granite_fms\n"
        "assert 'transformers' not in sys.modules, 'import granite_fms imported transformers'\n"
        "from fms.models.hf.config_utils import _FMS_MODEL_CONFIG_REGISTRY as registry\n"
        "arch = registry.map_hf_to_fms_arch('GraniteSpeechForConditionalGeneration')\n"
        "assert arch == 'granite_speech', arch\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stderr
