"""Compiled generation: one graph per region, a bounded number of graphs, eager's tokens."""

import pytest
import torch
from fms.utils.generation import pad_input_ids
from torch._dynamo.testing import CompileCounterWithBackend

from granite_fms.audio.features import AudioFeatures
from granite_fms.inference.generation import BucketPolicy, Generator
from granite_fms.pipeline import SpeechPipeline
from helpers import fms_generate, rel_err


@pytest.fixture
def strict_dynamo():
    """Fail instead of silently falling back to eager when a recompile limit is hit."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()


def _request(model, frames: list[int], suffixes: list[int]):
    """Prompts with expanded placeholders and a padded feature batch for clips of `frames`."""
    audio_id = model.config.audio_token_index
    feats = torch.zeros(len(frames), max(frames), 160)
    mask = torch.zeros(len(frames), max(frames), dtype=torch.bool)
    for i, n in enumerate(frames):
        feats[i, :n] = torch.randn(n, 160)
        mask[i, :n] = True
    counts = model.audio_token_counts(mask)
    ids = [
        torch.tensor([1, 5] + [audio_id] * int(c) + list(range(7, 7 + s)))
        for c, s in zip(counts, suffixes, strict=True)
    ]
    return ids, AudioFeatures(feats, mask, counts)


def _tokens(generations) -> list[list[int]]:
    return [g.tokens for g in generations]


def _fms_generate(model, ids, feats=None, mask=None, new=6):
    """Reference for one request: FMS's eager `generate` with its dynamic cache."""
    x, padding = pad_input_ids([ids])
    return fms_generate(model, x, feats, mask, new=new, **padding)[0].tolist()


# Static audio buckets, whole 200-frame encoder blocks: 4, 8, 16, 32 s.
STATIC_AUDIO = BucketPolicy(audio_frames=(200, 400, 800, 1600))


def test_bucket_policy():
    assert [BucketPolicy().frames(n) for n in (1, 201, 1750)] == [1, 201, 1750]  # symbolic
    policy = STATIC_AUDIO
    assert [policy.frames(n) for n in (1, 200, 201, 1500, 1600)] == [200, 200, 400, 1600, 1600]
    assert policy.frames(1601) == 3200 and policy.frames(4000) == 4800  # longer audio: more
    assert [policy.rows(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 4, 8]
    assert policy.tokens(65) == 128 and policy.tokens(513) == 1024
    assert policy.cache_len(128, 200) == 512
    with pytest.raises(ValueError, match="increasing"):
        BucketPolicy(audio_frames=(400, 200))


def test_three_graphs_and_fms_tokens_for_a_mixed_batch(pair_33, strict_dynamo):
    """Audio path, prefill and decode: one fullgraph graph each; tokens equal FMS's eager."""
    _, fm = pair_33
    ids, feats = _request(fm, [61, 23, 45], [2, 0, 5])
    cnt = CompileCounterWithBackend("eager")
    out = _tokens(Generator(fm, backend=cnt).generate(ids, feats, max_new_tokens=6))
    assert cnt.frame_count == 3
    for i, row in enumerate(ids):
        n = int(feats.input_features_mask[i].sum())
        ref = _fms_generate(
            fm, row, feats.input_features[i : i + 1, :n], feats.input_features_mask[i : i + 1, :n]
        )
        assert out[i] == ref


def test_bucketing_changes_no_output(pair_33):
    """Prefill logits of a padded bucket equal the unpadded forward (fp32 rounding only)."""
    _, fm = pair_33
    ids, feats = _request(fm, [61], [3])
    gen = Generator(fm, STATIC_AUDIO, compile=False)
    p = gen.prepare(ids, feats, max_new_tokens=4)
    assert p.input_ids.shape[1] == 64 and p.features.shape[1] == 200
    with torch.no_grad():
        fm.start_request(True)
        embeds = fm.merge_audio(p.input_ids, gen.encode(p.features, p.frame_mask), p.frame_mask)
        got = gen.prefill(embeds, p.position_ids, p.cache, torch.arange(p.prompt_len), p.key_valid)
        ref = fm(ids[0][None], input_features=feats.input_features)[:, -1]
    assert rel_err(ref, got) < 1e-5


@pytest.mark.parametrize("policy", [BucketPolicy(), STATIC_AUDIO], ids=["symbolic", "static"])
def test_recompiles_bounded_over_lengths_prompts_and_batches(pair_33, strict_dynamo, policy):
    """9 audio lengths (0.5-30 s), varying prompts, batch 1-4: graphs = buckets hit (symbolic
    audio: at most 4 audio graphs per batch bucket), then none, also for new lengths."""
    _, fm = pair_33
    symbolic = policy.audio_frames is None
    seconds = [0.5, 1.3, 2.9, 4.7, 7.5, 11, 17, 23, 30]
    sweep = []
    for i, s in enumerate(seconds):
        batch = i % 4 + 1
        frames = [max(2, int(s * 50) - 7 * j) for j in range(batch)]
        sweep.append(_request(fm, frames, [(i + j) % 5 for j in range(batch)]))
    sweep.append(_request(fm, [400, 12], [0, 1]))  # whole blocks (and 2 rows in one block)
    sweep.append(_request(fm, [12], [0]))  # one block
    text_only = [torch.tensor([1, 5, 6, 7]), torch.tensor([1, 9])]
    cnt = CompileCounterWithBackend("eager")
    gen = Generator(fm, policy, backend=cnt)
    expected, batches = set(), set()
    new = 3
    for ids, feats in sweep:
        gen.generate(ids, feats, max_new_tokens=new)
        rows = policy.rows(len(ids))
        seq = policy.tokens(max(len(r) for r in ids))
        cache = policy.cache_len(seq, new)
        batches.add(rows)
        expected |= {("prefill", rows, seq, cache), ("decode", rows, cache)}
        if not symbolic:
            expected.add(("encode", policy.frames(feats.input_features.shape[1]), rows))
    audio_graphs = cnt.frame_count - len(expected)
    if symbolic:  # a few specialisations per batch bucket, whatever the lengths
        assert len(batches) <= audio_graphs <= 4 * len(batches)
    else:
        assert audio_graphs == 0
    # The documented bound for 0-30 s, batch <= 4 and one max_new_tokens: 4 audio buckets (or
    # symbolic cases) x 3 batch buckets for the audio path (the merge is outside it, so
    # prompt buckets do not multiply it), 4 prompt x 3 batch for prefill, 2 cache lengths x 3
    # batch for decode.
    assert cnt.frame_count <= 4 * 3 + 4 * 3 + 2 * 3
    before = cnt.frame_count
    for ids, feats in sweep:  # every shape again: nothing new
        gen.generate(ids, feats, max_new_tokens=new)
    assert cnt.frame_count == before
    if symbolic:  # new lengths (3 frames longer, same cases) compile nothing either
        for frames, rows in ((148, 4), (238, 4), (378, 1), (553, 2), (1503, 1)):
            ids, feats = _request(fm, [frames] * rows, [0] * rows)
            gen.generate(ids, feats, max_new_tokens=new)
        assert cnt.frame_count == before
    gen.generate(text_only, max_new_tokens=new)  # text only: prefill and decode, no audio path
    cache = policy.cache_len(64, new)
    expected |= {("prefill", 2, 64, cache), ("decode", 2, cache)}
    assert cnt.frame_count == len(expected) + audio_graphs


def test_adapter_switch_reuses_graphs(pair_33, strict_dynamo):
    """Speech, text-only, speech: the LoRA scale is a buffer, so no graph is recompiled."""
    _, fm = pair_33
    ids, feats = _request(fm, [40], [3])
    text = [torch.tensor([1, 5] + [6] * 10 + [7])]  # same prompt bucket as the speech request
    cnt = CompileCounterWithBackend("eager")
    gen = Generator(fm, backend=cnt)
    speech = gen.generate(ids, feats, max_new_tokens=4)
    assert fm.adapter_active
    text_out = gen.generate(text, max_new_tokens=4)
    assert not fm.adapter_active
    assert gen.generate(ids, feats, max_new_tokens=4) == speech
    assert cnt.frame_count == 3
    assert _tokens(text_out) == [_fms_generate(fm, text[0], new=4)]


def test_long_audio_takes_a_larger_bucket_not_truncated(pair_33):
    """35 s (1750 frames) is past the largest static bucket: padded to 3200 frames, all tokens
    kept; with symbolic audio it stays 1750 frames."""
    _, fm = pair_33
    ids, feats = _request(fm, [1750], [1])
    assert Generator(fm, compile=False).prepare(ids, feats, 4).features.shape[1] == 1750
    gen = Generator(fm, STATIC_AUDIO, compile=False)
    p = gen.prepare(ids, feats, max_new_tokens=4)
    assert p.features.shape[1] == 3200
    assert int((p.input_ids == fm.config.audio_token_index).sum()) == 351
    ref = _fms_generate(fm, ids[0], feats.input_features, feats.input_features_mask, new=4)
    assert _tokens(gen.generate(ids, feats, max_new_tokens=4)) == [ref]


def test_inductor_generation_matches_eager(pair_33):
    """The real thing once: Inductor-compiled regions give eager's logits and tokens."""
    _, fm = pair_33
    torch._dynamo.reset()
    ids, feats = _request(fm, [45, 30], [2, 4])
    eager = Generator(fm, compile=False)
    compiled = Generator(fm)
    assert compiled.generate(ids, feats, max_new_tokens=5) == eager.generate(
        ids, feats, max_new_tokens=5
    )
    p = eager.prepare(ids, feats, max_new_tokens=5)
    position = torch.arange(p.prompt_len)
    with torch.no_grad():
        audio = eager.encode(p.features, p.frame_mask)
        assert rel_err(audio, compiled.encode(p.features, p.frame_mask)) < 1e-5
        embeds = fm.merge_audio(p.input_ids, audio, p.frame_mask)
        ref = eager.prefill(embeds, p.position_ids, p.cache, position, p.key_valid)
        got = compiled.prefill(embeds, p.position_ids, p.cache, position, p.key_valid)
    assert rel_err(ref, got) < 1e-5


def test_pipeline_compile_gives_eager_ids(ckpt_33, pair_33, strict_dynamo):
    _, fm = pair_33
    pipe = SpeechPipeline(fm)
    clips = [torch.randn(16000), torch.randn(9000)]
    prompt = [1, 5, fm.config.audio_token_index, 7]
    eager = pipe.generate_ids(clips, prompt_ids=prompt, max_new_tokens=5)
    cnt = CompileCounterWithBackend("eager")
    assert pipe.compile(backend=cnt) is pipe
    assert pipe.generate_ids(clips, prompt_ids=prompt, max_new_tokens=5) == eager
    assert cnt.frame_count == 3


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda fm: ([torch.tensor([1, fm.config.audio_token_index])], None), "no audio"),
        (lambda fm: (_request(fm, [30], [0])[0], _request(fm, [60], [0])[1]), "do not match"),
        (
            lambda fm: (_request(fm, [30, 30], [0, 0])[0][:1], _request(fm, [30, 30], [0, 0])[1]),
            "1 prompts for 2",
        ),
    ],
)
def test_bad_requests_raise(pair_33, make, match):
    _, fm = pair_33
    ids, feats = make(fm)
    with pytest.raises(ValueError, match=match):
        Generator(fm, compile=False).generate(ids, feats, max_new_tokens=2)


def test_recompile_limit_is_scoped_not_global(pair_33, strict_dynamo):
    """The raised limit applies while a region runs; the process-wide setting is untouched."""
    _, fm = pair_33
    before = torch._dynamo.config.recompile_limit
    ids, feats = _request(fm, [40], [3])
    Generator(fm, backend="eager").generate(ids, feats, max_new_tokens=3)
    assert torch._dynamo.config.recompile_limit == before


def test_static_caches_are_bounded(pair_33):
    _, fm = pair_33
    gen = Generator(fm, compile=False, max_caches=2)
    for rows in (1, 2, 3, 5):  # batch buckets 1, 2, 4, 8: four caches asked for
        ids, feats = _request(fm, [30] * rows, [1] * rows)
        gen.generate(ids, feats, max_new_tokens=2)
    assert list(gen._caches) == [(4, 256), (8, 256)]


@pytest.mark.parametrize(
    "policy, frames",
    [(BucketPolicy(), None), (STATIC_AUDIO, [200, 400])],
    ids=["symbolic", "static"],
)
def test_warmup_compiles_what_requests_then_use(pair_33, strict_dynamo, policy, frames):
    _, fm = pair_33
    cnt = CompileCounterWithBackend("eager")
    gen = Generator(fm, policy, backend=cnt)
    gen.warmup(frames, batch=(1, 2), text_tokens=5, max_new_tokens=6, progress=False)
    warmed = cnt.frame_count
    assert warmed >= 4  # an audio graph per (audio, batch) bucket, plus prefill and decode
    for frames, rows in ((150, 1), (380, 2), (13, 1), (40, 2)):
        ids, feats = _request(fm, [frames] * rows, [3] * rows)
        gen.generate(ids, feats, max_new_tokens=6)
    assert cnt.frame_count == warmed


def test_regional_compilation_one_graph_for_all_layers(ckpt_33):
    """Regional: each conformer block and decoder layer compiled in place, one graph for
    every instance of a block (per shape); tokens equal the eager loop's."""
    import granite_fms

    fm = granite_fms.load_model(ckpt_33)  # its own copy: compiling blocks changes the model
    torch._dynamo.reset()
    ids, feats = _request(fm, [45, 30], [2, 4])
    eager = _tokens(Generator(fm, compile=False).generate(ids, feats, max_new_tokens=5))
    cnt = CompileCounterWithBackend("eager")
    regional = Generator(fm, backend=cnt, regional=True)
    assert _tokens(regional.generate(ids, feats, max_new_tokens=5)) == eager
    # 2 encoder blocks: one graph; 2 decoder layers: one graph each for prefill and decode
    assert cnt.frame_count == 3
    torch._dynamo.reset()


def test_regional_compilation_past_the_default_recompile_limit(ckpt_33, strict_dynamo):
    """The decoder layers' graphs (a prefill shape per prompt and batch bucket, a decode shape
    per cache and batch bucket) pass Dynamo's default limit of 8: the Generator's raised
    limit covers the regional blocks too, or the ninth shape would raise."""
    import granite_fms

    fm = granite_fms.load_model(ckpt_33)  # its own copy: compiling blocks changes the model
    cnt = CompileCounterWithBackend("eager")
    gen = Generator(fm, backend=cnt, regional=True)
    for rows in (1, 2, 3):
        for length in (10, 100, 200):  # prompt buckets 64, 128, 256
            gen.generate([torch.arange(1, length + 1) % 100 + 1] * rows, max_new_tokens=2)
    assert cnt.frame_count > torch._dynamo.config.recompile_limit
    torch._dynamo.reset()
