"""int8 weight-only LLM (torchao) on the built-in default: close to the unquantised model.

Tolerance: int8 with one scale per output row rounds each weight by at most half a step,
max|row| / 254 (0.4% of the row's largest weight); through 4 layers the logits move by
about 3e-3 of their scale (measured), gated at 1e-2. The greedy choice must agree at 95% of
positions (measured: all of them).
"""

import copy

import pytest
import torch
from fms.models import get_model
from torch._dynamo.testing import CompileCounterWithBackend

from granite_fms import ARCHITECTURE
from granite_fms.inference.compile import CompileConfig, saves_dynamo_output
from granite_fms.inference.generation import Generator
from granite_fms.inference.quantize import quantize_llm
from helpers import rel_err


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    fm = get_model(ARCHITECTURE, "tiny").eval()
    return fm, quantize_llm(copy.deepcopy(fm))


def test_int8_logits_and_greedy_agreement(tiny_pair):
    fm, q = tiny_pair
    layer = q.language_model.base_model.layers[0]
    assert type(layer.attn.in_proj.qkv_fused.weight).__name__ == "Int8Tensor"
    assert type(q.language_model.head.weight).__name__ == "Int8Tensor"
    assert isinstance(layer.attn.in_proj.lora_a.weight, torch.nn.Parameter)  # LoRA kept
    assert not type(q.language_model.base_model.embedding.weight).__name__.startswith("Int8")
    ids = torch.randint(1, 49000, (2, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = fm(ids)[0], q(ids)[0]
    assert 0 < rel_err(ref, got) < 1e-2  # > 0: the weights really are quantised
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean() >= 0.95


def test_int8_generator_compiles_fullgraph(tiny_pair):
    _, q = tiny_pair
    ids = [torch.randint(1, 49000, (20,), generator=torch.Generator().manual_seed(2))]
    eager = Generator(q).generate(ids, max_new_tokens=4)
    torch._dynamo.reset()
    cnt = CompileCounterWithBackend("aot_eager")
    assert Generator(q, compile=CompileConfig(backend=cnt)).generate(ids, max_new_tokens=4) == eager
    assert cnt.frame_count == 2  # prefill and decode (text only: no audio graph)
    torch._dynamo.reset()


def test_int8_regions_keep_dynamo_output_out_of_the_artifact(tiny_pair):
    """torch 2.14 cannot save Dynamo's output over torchao's int8 weights (`empty_like` on
    `Int8Tensor`): their regions compile as without `caching_precompile`."""
    fm, q = tiny_pair
    assert saves_dynamo_output(fm) and not saves_dynamo_output(q)
    regions = Generator(q, compile=CompileConfig()).regions.values()
    assert not any(region._precompile for region in regions)


def test_unknown_scheme_is_refused(tiny_pair):
    with pytest.raises(ValueError, match="quantisation scheme must be one of"):
        quantize_llm(tiny_pair[0], "int4")
