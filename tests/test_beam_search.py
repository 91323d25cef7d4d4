"""The one generation loop: beam search identical to HF's, EOS handling per row, budgets.

HF reference: `GraniteSpeechForConditionalGeneration.generate(num_beams=4)` with its defaults
(`length_penalty=1.0`, `early_stopping=False`), one clip at a time, on checkpoints HF wrote.
"""

import pytest
import torch
from fms.utils.generation import generate, pad_input_ids
from torch._dynamo.testing import CompileCounterWithBackend

from granite_fms.audio.features import AudioFeatures
from granite_fms.inference.compile import CompileConfig
from granite_fms.inference.generation import Generator
from helpers import audio_prompt, fms_generate, n_tokens

BEAMS, NEW = 4, 12


def _clip_request(fm, frames: list[int], seed: int = 0):
    """Prompts (placeholders expanded), a padded feature batch and the clips one by one."""
    gen = torch.Generator().manual_seed(seed)
    clips = [torch.randn(1, n, 160, generator=gen) for n in frames]
    feats = torch.zeros(len(frames), max(frames), 160)
    mask = torch.zeros(len(frames), max(frames), dtype=torch.bool)
    for i, (clip, n) in enumerate(zip(clips, frames, strict=True)):
        feats[i, :n], mask[i, :n] = clip[0], True
    ids = [audio_prompt(fm.config.audio_token_index, n_tokens(fm, n))[0] for n in frames]
    return ids, AudioFeatures(feats, mask, fm.audio_token_counts(mask)), clips


def _hf_beam_search(hf, ids, clip, eos=None, new=NEW, beams=BEAMS) -> list[int]:
    """HF's best beam for one request: its new tokens up to (not including) the first EOS."""
    hf.generation_config.eos_token_id = eos
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids[None],
            input_features=clip,
            max_new_tokens=new,
            num_beams=beams,
            do_sample=False,
            length_penalty=1.0,
            early_stopping=False,
            pad_token_id=0,
        )
    tokens = out[0, ids.numel() :].tolist()
    stops = [eos] if isinstance(eos, int) else (eos or [])
    end = next((i for i, t in enumerate(tokens) if t in stops), len(tokens))
    return tokens[:end]


@pytest.fixture(params=["eager", "compiled"])
def make_generator(request):
    """The same loop eager and compiled (aot_eager: the graphs, without Inductor's codegen)."""
    torch._dynamo.reset()
    if request.param == "eager":
        yield lambda fm: Generator(fm)
    else:
        yield lambda fm: Generator(fm, compile=CompileConfig(backend="aot_eager"))
    torch._dynamo.reset()


@pytest.mark.parametrize("pair_name", ["pair_33", "pair_4x"])
def test_beam_search_matches_hf_one_clip(request, pair_name, make_generator):
    hf, fm = request.getfixturevalue(pair_name)
    fm.set_adapter("auto")
    ids, feats, clips = _clip_request(fm, [45])
    want = _hf_beam_search(hf, ids[0], clips[0])
    got = make_generator(fm).generate(ids, feats, max_new_tokens=NEW, num_beams=BEAMS)
    assert got[0].tokens == want
    assert not got[0].finished and len(want) == NEW  # no EOS: the budget ended it
    assert len(set(want)) > 2  # a varied sequence, not one token repeated


def test_beam_search_differs_from_greedy(pair_33):
    """Guards the identity tests: on this checkpoint K=4 and greedy choose different tokens."""
    _, fm = pair_33
    ids, feats, _ = _clip_request(fm, [45])
    gen = Generator(fm)
    greedy = gen.generate(ids, feats, max_new_tokens=NEW)[0].tokens
    assert gen.generate(ids, feats, max_new_tokens=NEW, num_beams=BEAMS)[0].tokens != greedy


@pytest.mark.parametrize("pair_name", ["pair_33", "pair_4x"])
def test_beam_search_mixed_batch_matches_hf_one_clip_at_a_time(request, pair_name, make_generator):
    hf, fm = request.getfixturevalue(pair_name)
    fm.set_adapter("auto")
    ids, feats, clips = _clip_request(fm, [61, 17, 40], seed=1)
    got = make_generator(fm).generate(ids, feats, max_new_tokens=NEW, num_beams=BEAMS)
    for i, clip in enumerate(clips):
        assert got[i].tokens == _hf_beam_search(hf, ids[i], clip)


def _early_eos(tokens: list[int], at: int = 3) -> int:
    """A token first seen in `tokens` at index `at` or later (or, for a repetitive sequence,
    the latest new one before it): an EOS that this sequence meets early, not at once."""
    new = [i for i, t in enumerate(tokens) if i >= 1 and t not in tokens[:i]]
    later = [i for i in new if i >= at]
    return tokens[later[0] if later else new[-1]]


def test_beam_search_with_eos_some_beams_hit_early(pair_33, make_generator):
    """EOS ids taken from the beams' own output, so hypotheses finish at different steps."""
    hf, fm = pair_33
    fm.set_adapter("auto")
    ids, feats, clips = _clip_request(fm, [61, 17, 40], seed=1)
    free = [_hf_beam_search(hf, ids[i], clips[i]) for i in range(3)]
    gen = make_generator(fm)
    for eos in (_early_eos(free[0]), [_early_eos(free[1]), _early_eos(free[2], at=5)]):
        got = gen.generate(ids, feats, max_new_tokens=NEW, eos_token_id=eos, num_beams=BEAMS)
        wants = [_hf_beam_search(hf, ids[i], clips[i], eos=eos) for i in range(3)]
        assert [g.tokens for g in got] == wants
        assert wants != free  # the EOS changed the search (it sits inside a free result)
        for g, w in zip(got, wants, strict=True):
            assert g.finished == (len(w) < NEW)


def test_beam_search_text_only_matches_hf(pair_4x):
    hf, fm = pair_4x
    ids = audio_prompt(fm.config.audio_token_index, 0)[0]
    got = Generator(fm).generate([ids], max_new_tokens=NEW, num_beams=BEAMS)
    assert got[0].tokens == _hf_beam_search(hf, ids, None)


def test_beam_search_shares_the_decode_graph(pair_33):
    """Beam search adds one graph, the cache reorder; the decode step is greedy's."""
    _, fm = pair_33
    torch._dynamo.reset()
    ids, feats, _ = _clip_request(fm, [45, 30])
    cnt = CompileCounterWithBackend("eager")
    gen = Generator(fm, compile=CompileConfig(backend=cnt))
    gen.generate(ids, feats, max_new_tokens=5)
    assert gen.compiles == {"encode": 1, "prefill": 1, "decode": 1, "reorder": 0}
    gen.generate(ids, feats, max_new_tokens=5, num_beams=BEAMS)
    gen.generate(ids, feats, max_new_tokens=5, num_beams=BEAMS)
    assert cnt.frame_count == 4
    assert gen.compiles == {"encode": 1, "prefill": 1, "decode": 1, "reorder": 1}
    torch._dynamo.reset()


# ----- greedy: one row's EOS never cuts another row ---------------------------------------


def test_batch_eos_of_row_0_does_not_cut_row_1(pair_33_untied, make_generator):
    """The EOS id comes from row 0's own greedy output, so row 0 stops early. FMS's
    `generate` (1.13.1) ends the whole batch there; ours gives row 1 its single-row result."""
    _, fm = pair_33_untied
    ids, feats, _ = _clip_request(fm, [61, 40])
    gen = make_generator(fm)
    alone = [gen.generate([ids[i]], _one(feats, i), max_new_tokens=NEW)[0].tokens for i in range(2)]
    # first seen in row 0 after its first token, never in row 1
    eos = next(t for i, t in enumerate(alone[0]) if 0 < i and t not in alone[0][:i] + alone[1])
    got = gen.generate(ids, feats, max_new_tokens=NEW, eos_token_id=eos)
    assert got[0].tokens == alone[0][: alone[0].index(eos)] and got[0].finished
    assert got[1].tokens == alone[1] and not got[1].finished


def _one(feats: AudioFeatures, i: int) -> AudioFeatures:
    n = int(feats.input_features_mask[i].sum())
    return AudioFeatures(
        feats.input_features[i : i + 1, :n],
        feats.input_features_mask[i : i + 1, :n],
        feats.audio_token_counts[i : i + 1],
    )


def test_budget_per_request(pair_33):
    _, fm = pair_33
    ids, feats, _ = _clip_request(fm, [61, 40], seed=2)
    gen = Generator(fm)
    full = gen.generate(ids, feats, max_new_tokens=NEW)
    got = gen.generate(ids, feats, max_new_tokens=[3, NEW])
    assert got[0].tokens == full[0].tokens[:3] and not got[0].finished
    assert got[1].tokens == full[1].tokens
    with pytest.raises(ValueError, match="2 max_new_tokens values for 1 requests"):
        gen.generate(ids[:1], _one(feats, 0), max_new_tokens=[3, 4])


# ----- fms.utils.generation.generate without the hook ---------------------------------------


def test_fms_generate_without_the_hook(pair_33):
    """Upstream FMS's own test calls `generate` with `input_features` and no hook: audio is
    merged at the first step, the decode steps skip it, and the adapter follows the request."""
    _, fm = pair_33
    fm.set_adapter("auto")
    ids, feats, clips = _clip_request(fm, [45])
    x, padding = pad_input_ids(ids)
    with_hook = fms_generate(fm, x, clips[0], new=8)
    fm.start_request(False)
    out = generate(
        fm,
        x,
        max_new_tokens=8,
        max_seq_len=512,
        do_sample=False,
        use_cache=True,
        extra_kwargs={"input_features": clips[0]},
    )
    assert fm.adapter_active
    assert out[:, -8:].tolist() == with_hook.tolist()
