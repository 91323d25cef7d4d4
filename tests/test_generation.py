"""Compiled generation: one graph per region, a bounded number of graphs, eager's tokens."""

import pytest
import torch
from fms.utils.generation import pad_input_ids
from torch._dynamo.testing import CompileCounterWithBackend

from granite_fms.audio.features import AudioFeatures
from granite_fms.inference.compile import CompileConfig
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
    with pytest.raises(ValueError, match="audio_rows must be positive"):
        BucketPolicy(audio_rows=0)
    with pytest.raises(ValueError, match="increasing"):
        BucketPolicy(audio_frames=(400, 200))


def test_three_graphs_and_fms_tokens_for_a_mixed_batch(pair_33, strict_dynamo):
    """Audio path, prefill and decode: one fullgraph graph each; tokens equal FMS's eager."""
    _, fm = pair_33
    ids, feats = _request(fm, [61, 23, 45], [2, 0, 5])
    cnt = CompileCounterWithBackend("eager")
    out = _tokens(
        Generator(fm, compile=CompileConfig(backend=cnt)).generate(ids, feats, max_new_tokens=6)
    )
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
    gen = Generator(fm, STATIC_AUDIO)
    p = gen.prepare(ids, feats, max_new_tokens=4)
    assert p.input_ids.shape[1] == 64 and p.features.shape[1] == 200
    with torch.no_grad():
        fm.start_request(True)
        embeds = fm.merge_audio(p.input_ids, gen.encode(p.features, p.frame_mask), p.frame_mask)
        got = gen.prefill(embeds, p.position_ids, p.cache, torch.arange(p.prompt_len), p.key_valid)
        ref = fm(ids[0][None], input_features=feats.input_features)[:, -1]
    assert rel_err(ref, got) < 1e-5


def _sweep_request(fm, seconds: float, rows: int, suffix: int):
    """`rows` clips, the longest `seconds` long, the others shorter; prompts of varied length."""
    frames = [max(16, round(seconds * 50) - 7 * j) for j in range(rows)]
    return _request(fm, frames, [(suffix + 3 * j) % 110 for j in range(rows)])


# (seconds of the longest clip, clips, prompt suffix tokens, beams): audio 0.36-30 s (one
# encoder block of the tiny encoder is 20 frames, 0.4 s), batch 1-32, every prompt bucket.
WIDE_SWEEP = [(0.36, 1, 2, 1), (0.5, 1, 40, 4), (1.3, 2, 30, 4), (2.9, 3, 70, 1), (4.7, 5, 5, 1),
              (7.5, 8, 100, 1), (11, 13, 30, 1), (17, 1, 90, 4), (4.7, 32, 3, 1),
              (30, 2, 14, 2)]  # fmt: skip
NEW_SIZES = [(0.38, 1, 7, 1), (3.3, 6, 60, 1), (9.1, 20, 11, 1), (28, 3, 25, 3)]


@pytest.mark.parametrize("regional", [False, True], ids=["whole", "regional"])
def test_one_graph_per_region_whatever_the_batch_and_prompt(ckpt_33, strict_dynamo, regional):
    """Symbolic shapes: over audio 0.36-30 s, batch 1-32, every prompt bucket, greedy and beam
    search, the four regions compile a fixed set of 6 graphs (the audio path: one clip within
    one encoder block, one clip over several, several clips; regional: as many graphs of the
    blocks); new batch sizes, lengths and text-only requests then compile nothing."""
    import granite_fms

    fm = granite_fms.load_model(ckpt_33)  # its own copy: regional compiles blocks in place
    gen = Generator(fm, compile=CompileConfig(backend="aot_eager", regional=regional))
    prompts = set()
    for seconds, rows, suffix, beams in WIDE_SWEEP:
        ids, feats = _sweep_request(fm, seconds, rows, suffix)
        gen.generate(ids, feats, max_new_tokens=3, num_beams=beams)
        prompts.add(gen.policy.tokens(max(len(r) for r in ids)))
    assert prompts == set(gen.policy.prompt_tokens)  # every prompt bucket
    assert gen.compiles == {"encode": 3, "prefill": 1, "decode": 1, "reorder": 1}
    for seconds, rows, suffix, beams in NEW_SIZES:
        ids, feats = _sweep_request(fm, seconds, rows, suffix)
        gen.generate(ids, feats, max_new_tokens=5, num_beams=beams)
    gen.generate([torch.tensor([1, 5, 6, 7]), torch.tensor([1, 9])], max_new_tokens=3)
    assert sum(gen.compiles.values()) == 6


def test_static_shapes_compile_a_graph_per_bucket(pair_33, strict_dynamo):
    """`symbolic=False` with static audio buckets: exactly a graph per bucket hit (audio x
    batch, prompt x batch x cache, batch x cache), then none for the same buckets."""
    _, fm = pair_33
    policy = STATIC_AUDIO
    seconds = [0.5, 1.3, 2.9, 4.7, 7.5, 11, 17, 23, 30]
    sweep = [_sweep_request(fm, s, i % 4 + 1, i % 5) for i, s in enumerate(seconds)]
    gen = Generator(fm, policy, compile=CompileConfig(backend="aot_eager", symbolic=False))
    expected, new = set(), 3
    for ids, feats in sweep:
        gen.generate(ids, feats, max_new_tokens=new)
        rows = policy.rows(len(ids))
        seq = policy.tokens(max(len(r) for r in ids))
        cache = policy.cache_len(seq, new)
        expected |= {("prefill", rows, seq, cache), ("decode", rows, cache)}
        expected.add(("encode", policy.frames(feats.input_features.shape[1]), rows))
    graphs = sum(gen.compiles.values())
    assert graphs == len(expected)
    for ids, feats in sweep:  # every bucket again: nothing new
        gen.generate(ids, feats, max_new_tokens=new)
    assert sum(gen.compiles.values()) == graphs


def test_adapter_switch_reuses_graphs(pair_33, strict_dynamo):
    """Speech, text-only, speech: the LoRA scale is a buffer, so no graph is recompiled."""
    _, fm = pair_33
    ids, feats = _request(fm, [40], [3])
    text = [torch.tensor([1, 5] + [6] * 10 + [7])]  # same prompt bucket as the speech request
    cnt = CompileCounterWithBackend("eager")
    gen = Generator(fm, compile=CompileConfig(backend=cnt))
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
    assert Generator(fm).prepare(ids, feats, 4).features.shape[1] == 1750
    gen = Generator(fm, STATIC_AUDIO)
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
    eager = Generator(fm)
    compiled = Generator(fm, compile=CompileConfig())
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
        Generator(fm).generate(ids, feats, max_new_tokens=2)


def test_recompile_limit_is_scoped_not_global(pair_33, strict_dynamo):
    """The raised limit applies while a region runs; the process-wide setting is untouched."""
    _, fm = pair_33
    before = torch._dynamo.config.recompile_limit
    ids, feats = _request(fm, [40], [3])
    Generator(fm, compile=CompileConfig(backend="eager")).generate(ids, feats, max_new_tokens=3)
    assert torch._dynamo.config.recompile_limit == before


def test_static_caches_are_bounded(pair_33):
    _, fm = pair_33
    gen = Generator(fm, max_caches=2)
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
    gen = Generator(fm, policy, compile=CompileConfig(backend=cnt))
    gen.warmup(frames, (1, 2), text_tokens=5, max_new_tokens=6, num_beams=(1, 2), progress=False)
    warmed = cnt.frame_count
    assert warmed == sum(gen.compiles.values()) >= 5  # audio graphs, prefill, decode, reorder
    assert len(gen.warmed_up) == 2 * 2 * len(frames or [0, 0])
    for frames, rows, beams in ((150, 1, 1), (380, 2, 2), (18, 1, 1), (40, 2, 1)):
        ids, feats = _request(fm, [frames] * rows, [3] * rows)
        gen.generate(ids, feats, max_new_tokens=6, num_beams=beams)
    assert cnt.frame_count == warmed


def test_regional_compilation_one_graph_for_all_layers(ckpt_33):
    """Regional: each conformer block and decoder layer compiled in place, one graph for
    every instance of a block (per shape); tokens equal the eager loop's."""
    import granite_fms

    fm = granite_fms.load_model(ckpt_33)  # its own copy: compiling blocks changes the model
    torch._dynamo.reset()
    ids, feats = _request(fm, [45, 30], [2, 4])
    eager = _tokens(Generator(fm).generate(ids, feats, max_new_tokens=5))
    cnt = CompileCounterWithBackend("eager")
    regional = Generator(fm, compile=CompileConfig(backend=cnt, regional=True))
    assert _tokens(regional.generate(ids, feats, max_new_tokens=5)) == eager
    # 2 encoder blocks: one graph; 2 decoder layers: one graph (prefill); the decode step is
    # one graph of its own, every layer inlined (one CUDA graph on a GPU)
    assert cnt.frame_count == 3
    assert regional.compiles == {"encode": 1, "prefill": 1, "decode": 1, "reorder": 0}
    torch._dynamo.reset()


def test_regional_compilation_past_the_default_recompile_limit(ckpt_33, strict_dynamo):
    """With static shapes the decoder layers' graphs (a prefill shape per prompt and batch
    bucket) pass Dynamo's default limit of 8: the Generator's raised limit covers the
    regional blocks too, or the ninth shape would raise."""
    import granite_fms

    fm = granite_fms.load_model(ckpt_33)  # its own copy: compiling blocks changes the model
    cnt = CompileCounterWithBackend("eager")
    config = CompileConfig(backend=cnt, regional=True, symbolic=False)
    gen = Generator(fm, compile=config)
    for rows in (1, 2, 3):
        for length in (10, 100, 200):  # prompt buckets 64, 128, 256
            gen.generate([torch.arange(1, length + 1) % 100 + 1] * rows, max_new_tokens=2)
    assert cnt.frame_count > torch._dynamo.config.recompile_limit
    torch._dynamo.reset()
