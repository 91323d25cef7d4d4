"""The audio path and the LLM compile as single graphs; the adapter switch reuses them."""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from helpers import audio_prompt, n_tokens, rel_err


def _counter(backend="eager"):
    torch._dynamo.reset()
    return CompileCounterWithBackend(backend)


def test_audio_path_is_one_graph_and_matches_eager(pair_33):
    """Encoder, projector and merge: fullgraph, no host sync, a batch of mixed lengths."""
    _, fm = pair_33
    feats = torch.randn(2, 61, 160)
    mask = torch.ones(2, 61, dtype=torch.bool)
    mask[1, 23:] = False
    counts = fm.audio_token_counts(mask).tolist()
    ids = torch.cat(
        [audio_prompt(fm.config.audio_token_index, n) for n in counts[:1]]
        + [
            audio_prompt(
                fm.config.audio_token_index,
                counts[1],
                suffix=(7, 8) + (9,) * (counts[0] - counts[1]),
            )
        ],
    )
    cnt = _counter("aot_eager")
    compiled = torch.compile(fm.embed_audio_and_text, backend=cnt, fullgraph=True)
    with torch.no_grad():
        out = compiled(ids, feats, mask)
        ref = fm.embed_audio_and_text(ids, feats, mask)
    assert cnt.frame_count == 1
    assert rel_err(ref, out) < 1e-6


def test_adapter_switch_does_not_recompile(pair_33):
    _, fm = pair_33
    cnt = _counter()
    compiled = torch.compile(fm, backend=cnt, fullgraph=True)
    ids = audio_prompt(fm.config.audio_token_index, 0)
    outs = []
    with torch.no_grad():
        for mode in ["on", "off", "on", "off"]:
            fm.set_adapter(mode)
            outs.append(compiled(ids))
            eager = fm(ids)
            assert rel_err(eager, outs[-1]) < 1e-6
    fm.set_adapter("auto")
    assert cnt.frame_count == 1
    assert rel_err(outs[0], outs[1]) > 1e-2  # the switch took effect inside the graph


def test_inductor_audio_path_matches_eager(pair_33):
    """One real Inductor compile of the audio path (generated code, not just tracing)."""
    _, fm = pair_33
    torch._dynamo.reset()
    feats = torch.randn(1, 45, 160)
    mask = torch.ones(1, 45, dtype=torch.bool)
    ids = audio_prompt(fm.config.audio_token_index, n_tokens(fm, 45))
    compiled = torch.compile(fm.embed_audio_and_text, fullgraph=True)
    with torch.no_grad():
        assert rel_err(fm.embed_audio_and_text(ids, feats, mask), compiled(ids, feats, mask)) < 1e-5


def test_whole_forward_with_audio_is_one_graph(pair_33):
    """`model(ids, input_features=...)`: validation included, fullgraph, no host sync."""
    _, fm = pair_33
    feats = torch.randn(1, 45, 160)
    ids = audio_prompt(fm.config.audio_token_index, n_tokens(fm, 45))
    cnt = _counter("aot_eager")
    compiled = torch.compile(fm, backend=cnt, fullgraph=True)
    with torch.no_grad():
        fm.start_request(True)
        assert rel_err(fm(ids, input_features=feats), compiled(ids, input_features=feats)) < 1e-6
        bad = audio_prompt(
            fm.config.audio_token_index, n_tokens(fm, 45) - 3, suffix=(7, 8, 9, 9, 9)
        )
        with pytest.raises(RuntimeError, match="audio placeholders and audio embeddings"):
            compiled(bad, input_features=feats)  # same shapes, wrong count: the device check
    assert cnt.frame_count == 1
