"""int8 weight-only quantisation of the LLM's linear layers, with torchao.

    from granite_fms.inference.quantize import quantize_llm
    quantize_llm(model, "int8")          # in place; or pipe.quantize("int8")

Batch-1 decode reads every LLM weight once per token, so halving (bf16) or quartering (fp32)
the bytes per weight lowers its memory-bandwidth floor. torchao's `Int8WeightOnlyConfig`
stores each weight as int8 with one scale per output row and dequantises inside the matmul;
it is a tensor subclass that `torch.compile` traces (fullgraph). FMS's own quantisation path
targets GPTQ checkpoints through fms-model-optimizer, which needs a calibrated checkpoint;
torchao quantises any checkpoint at load time, which is what a user with the released
weights needs.

Quantised: every `nn.Linear` of the LLM (fused QKV, attention output, fused gate/up and down
projections, the LM head). Kept: the embedding (a lookup, not a matmul), the LoRA adapter's
small A/B matrices, and the encoder and projector (run once per request, not per token).
A tied head gets its own int8 copy; the embedding keeps the original weights.
"""

import torch
import torch.nn as nn

from granite_fms.models.granite_speech import GraniteSpeech

SCHEMES = ("int8",)


def quantize_llm(model: GraniteSpeech, scheme: str = "int8") -> GraniteSpeech:
    """Quantise the LLM's linear weights in place (`scheme`: "int8", weight-only)."""
    if scheme not in SCHEMES:
        raise ValueError(f"quantisation scheme must be one of {SCHEMES}, got {scheme!r}")
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    if is_quantized(model):
        raise ValueError("the LLM's linear weights are quantised already")
    llm = model.language_model
    if llm.config.tie_heads:
        head = llm.head
        head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    quantize_(llm, Int8WeightOnlyConfig(), filter_fn=_quantised)
    return model


def is_quantized(model: GraniteSpeech) -> bool:
    """Whether the LLM's linear weights are tensor subclasses (torchao's) already."""
    linears = [m for name, m in model.language_model.named_modules() if _quantised(m, name)]
    return any(type(m.weight) not in (torch.Tensor, nn.Parameter) for m in linears)


def _quantised(module: nn.Module, name: str) -> bool:
    return isinstance(module, nn.Linear) and ".lora_" not in f".{name}"


__all__ = ["SCHEMES", "is_quantized", "quantize_llm"]
