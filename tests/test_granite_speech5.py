"""Granite Speech 5.0 (TurboCTC) against Hugging Face's own classes on a checkpoint HF wrote.

fp32 parity stage by stage at 1e-5 of the reference's max magnitude (measured: about 4e-7),
frame ids and text equal to HF's `generate` + tokenizer decode, padding invariance, loading both
ways with clear errors, and the compiled graph: fullgraph, no breaks, symbolic batch and length.
"""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from fms.models import get_model
from torch._dynamo.testing import CompileCounterWithBackend

import granite_fms
from granite_fms.audio.features import load_audio
from granite_fms.audio.features5 import CTCFeatures, GraniteSpeech5FeatureExtractor
from granite_fms.inference.ctc import CTCDecoder, collapse, decode_texts
from granite_fms.models.granite_speech5 import (
    GraniteSpeech5,
    GraniteSpeech5Config,
    hf_to_fms_name,
)
from granite_fms.testing import save_hf5_checkpoint, tiny_hf5_config
from helpers import DATA, SENTENCES, rel_err

TOL = 1e-5
BLANK = 0


@pytest.fixture(scope="module")
def fe() -> GraniteSpeech5FeatureExtractor:
    return GraniteSpeech5FeatureExtractor()


@pytest.fixture(scope="module")
def hf_fe():
    return transformers.GraniteSpeech5FeatureExtractor()


@pytest.fixture(scope="module")
def tokenizer(ckpt5):
    return transformers.AutoTokenizer.from_pretrained(ckpt5)


@pytest.fixture(scope="module")
def waves() -> list[torch.Tensor]:
    """The three spoken sentences (4.52, 2.4 and 1.22 s) and 0.3 s of noise."""
    noise = 0.1 * torch.randn(4800, generator=torch.Generator().manual_seed(0))
    return [load_audio(DATA / name) for name in SENTENCES] + [noise]


def _hf_features(hf_fe, wave: torch.Tensor):
    return hf_fe(wave.numpy(), sampling_rate=16000, return_tensors="pt")


# ----- features ------------------------------------------------------------------------------


@pytest.mark.parametrize("num_samples", [257, 481, 1119, 1120, 16000, 16159, 16160, 33333])
def test_features_match_hf_per_clip(fe, hf_fe, waves, num_samples):
    """Lengths around the frame and frame-pair boundaries (an odd last mel frame is kept)."""
    wave = torch.cat(waves)[:num_samples]
    ref = _hf_features(hf_fe, wave)
    got = fe(wave)
    assert got.input_features.shape == ref["input_features"].shape
    assert rel_err(ref["input_features"], got.input_features) < TOL
    assert torch.equal(got.input_features_mask, ref["attention_mask"].bool())


def test_batched_features_are_each_clips_alone(fe, hf_fe, waves):
    """HF pads the waveforms before its spectrogram, so a shorter clip's last frame sees zeros
    instead of its own reflect padding (the fixtures end in silence, the noise clip does not);
    ours is computed alone, then padded."""
    batch = fe(waves)
    for i, wave in enumerate(waves):
        alone = fe(wave).input_features[0]
        n = alone.shape[0]
        assert torch.equal(batch.input_features[i, :n], alone)
        assert not batch.input_features[i, n:].any()
        assert int(batch.input_features_mask[i].sum()) == n
    hf_batch = hf_fe([w.numpy() for w in waves], sampling_rate=16000, return_tensors="pt")
    n = fe(waves[3]).input_features.shape[1]
    assert rel_err(batch.input_features[3, :n], hf_batch["input_features"][3, :n]) > 1e-3


# ----- the model, stage by stage -------------------------------------------------------------


def _trace(modules: list[torch.nn.Module], run) -> list[torch.Tensor]:
    """Each module's output (each runs once) while `run()` runs."""
    outputs: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o)) for m in modules]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


@pytest.mark.parametrize("frames", [4, 7, 9, 16, 33, 64, 77])
def test_every_stage_matches_hf(pair5, frames):
    """Input projection, each block (two subsampling), the mid-layer CTC logits and their
    feedback, the CTC logits. The tiny context is 8 frames: one block and several, at every
    rate, whole blocks and not."""
    hf, fm = pair5
    x = torch.randn(1, frames, fm.config.input_dim)
    names = ["input_linear"] + [f"block {i}" for i in range(len(fm.encoder.layers))]
    names += ["mid CTC logits", "mid feedback", "logits"]
    ref = _trace(
        [hf.encoder.input_linear, *hf.encoder.layers, hf.encoder.out, hf.encoder.out_mid]
        + [hf.ctc_head],
        lambda: hf(input_features=x),
    )
    out = _trace(
        [fm.encoder.input_linear, *fm.encoder.layers, fm.encoder.out, fm.encoder.out_mid]
        + [fm.head],
        lambda: fm(x),
    )
    assert len(ref) == len(out) == len(names)
    for name, r, o in zip(names, ref, out, strict=True):
        assert r.shape == o.shape, name
        assert rel_err(r, o) < TOL, name


def test_each_clip_of_a_padded_batch_gets_its_result_alone(pair5):
    """Mixed lengths padded past the longest (a bucket), with noise, not zeros, in the padding:
    every clip's logits are its own alone and HF's alone."""
    hf, fm = pair5
    lengths = [77, 40, 9, 33]
    x = torch.randn(len(lengths), 96, fm.config.input_dim)
    mask = torch.arange(96)[None, :] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        batch = fm(x, mask)
        valid = fm.output_mask(mask)
        ids, _ = fm.greedy_ids(x, mask)
        for i, n in enumerate(lengths):
            alone = fm(x[i : i + 1, :n])[0]
            m = alone.shape[0]
            assert int(valid[i].sum()) == m and not valid[i, m:].any()
            assert rel_err(alone, batch[i, :m]) < 1e-6
            assert rel_err(hf(input_features=x[i : i + 1, :n]).logits[0], batch[i, :m]) < TOL
            assert torch.equal(ids[i, :m], alone.argmax(-1))
            assert (ids[i, m:] == BLANK).all()


# ----- ids and text --------------------------------------------------------------------------


def test_ids_and_text_match_hf_generate(pair5, fe, hf_fe, tokenizer, waves):
    """One padded batch through `CTCDecoder` against HF's `generate` on each clip and its
    tokenizer's decode (ParakeetTokenizer: it collapses repeats, then drops the blank)."""
    hf, fm = pair5
    alignments = CTCDecoder(fm)(fe(waves))
    texts = decode_texts(tokenizer, alignments)
    for wave, alignment, text in zip(waves, alignments, texts, strict=True):
        with torch.no_grad():
            ids = hf.generate(**_hf_features(hf_fe, wave))
        assert collapse(ids, torch.ones_like(ids, dtype=torch.bool), BLANK) == [alignment]
        assert text == tokenizer.batch_decode(ids, skip_special_tokens=True)[0]
    # The paths hold what decoding must handle: blanks, repeats and text.
    assert all(a.tokens for a in alignments[:3])
    assert any(len(a.tokens) < a.num_frames for a in alignments)


def test_collapse_keeps_double_letters(tokenizer):
    """Repeats are collapsed before blanks are dropped: "l", blank, "l" stays two letters.
    Dropping the blanks first (what skipping special tokens does before a CTC collapse)
    merges them."""
    h, e, ell, o = tokenizer.convert_tokens_to_ids(["▁h", "e", "l", "o"])
    frames = torch.tensor([[h, h, e, BLANK, ell, ell, BLANK, ell, o, BLANK, BLANK, o]])
    valid = torch.ones_like(frames, dtype=torch.bool)
    valid[0, -1] = False  # a padded frame is never read
    [alignment] = collapse(frames, valid, BLANK)
    assert alignment.tokens == [h, e, ell, ell, o]
    assert alignment.frames == [0, 2, 4, 7, 8] and alignment.num_frames == 11
    assert decode_texts(tokenizer, [alignment]) == ["hello"]
    blanks_first = [i for i in frames[0, :11].tolist() if i != BLANK]
    assert tokenizer.decode(blanks_first) == "helo"


# ----- loading -------------------------------------------------------------------------------


def test_get_model_hf_pretrained_builds_the_same_model(pair5, ckpt5):
    _, fm = pair5
    model = get_model("hf_pretrained", model_path=str(ckpt5))
    assert isinstance(model, GraniteSpeech5)
    assert model.config == fm.config
    x = torch.randn(2, 30, fm.config.input_dim)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), fm(x))


def test_bf16_keeps_batch_norm_in_fp32_as_transformers_does(ckpt5):
    hf = transformers.GraniteSpeech5ForCTC.from_pretrained(ckpt5, dtype=torch.bfloat16).eval()
    fm = granite_fms.load_model(ckpt5, dtype=torch.bfloat16)

    def fp32(module: torch.nn.Module) -> set[str]:
        named = [*module.named_parameters(), *module.named_buffers()]
        return {n for n, t in named if t.dtype == torch.float32 and "batches_tracked" not in n}

    expected = {hf_to_fms_name(n) for n in fp32(hf)}
    assert expected and all(".batch_norm." in n for n in expected)
    assert fp32(fm) == expected
    x = torch.randn(1, 40, fm.config.input_dim).to(torch.bfloat16)
    with torch.no_grad():
        ref, out = hf(input_features=x).logits, fm(x)
    assert out.dtype == torch.bfloat16 and rel_err(out.float(), ref.float()) < 0.05


def test_untied_head_loads(tmp_path):
    config = tiny_hf5_config()
    config.tie_word_embeddings = False
    hf = save_hf5_checkpoint(tmp_path, config, seed=7)
    fm = granite_fms.load_model(tmp_path)
    assert not fm.config.tie_heads
    assert not torch.equal(hf.ctc_head.weight, hf.encoder.out.weight)
    x = torch.randn(1, 21, fm.config.input_dim)
    with torch.no_grad():
        assert rel_err(hf(input_features=x).logits, fm(x)) < TOL


def _edited_copy(src, dst, **encoder):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config["encoder_config"].update(encoder)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_bad_checkpoints_are_named(ckpt5, tmp_path):
    wider = _edited_copy(ckpt5, tmp_path / "wider", intermediate_size=96)
    with pytest.raises(
        ValueError, match=r"shape mismatch for .*ff1\.mlp\.w1.*feed_forward1\.linear1"
    ):
        granite_fms.load_model(wider)
    no_bias = _edited_copy(ckpt5, tmp_path / "no_bias", attention_bias=False)
    with pytest.raises(ValueError, match="attention_bias"):
        granite_fms.load_model(no_bias)
    with pytest.raises(ValueError, match="Granite Speech 5.0 has none"):
        granite_fms.load_model(ckpt5, distributed_strategy="tp")


def test_bad_inputs_are_named(pair5):
    _, fm = pair5
    with pytest.raises(ValueError, match=r"\(batch, frames, 320\)"):
        fm(torch.randn(1, 20, 160))
    with pytest.raises(ValueError, match="frame mask"):
        fm(torch.randn(2, 20, 320), torch.ones(2, 19, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least 4"):
        fm(torch.randn(1, 3, 320))
    with pytest.raises(ValueError, match="too short"):
        GraniteSpeech5FeatureExtractor()(np.zeros(100, dtype=np.float32))


# ----- compiled ------------------------------------------------------------------------------


def test_greedy_ids_is_one_graph_without_breaks(pair5):
    _, fm = pair5
    x = torch.randn(2, 40, fm.config.input_dim)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 25:] = False
    with torch.no_grad():
        explained = torch._dynamo.explain(fm.greedy_ids)(x, mask)
    assert explained.graph_count == 1 and explained.graph_break_count == 0


def test_batch_and_length_are_symbolic(one_thread):
    """Past one attention block at the lowest rate (16 frames here), every length and every
    batch of 2 to 15 rows runs one graph, whole blocks or not; one row is Dynamo's 0/1
    specialisation, and 16 rows or more the CPU convolutions' backend choice: a graph each.
    The compiled ids equal the eager ones. (Two blocks, one subsampling: half the tracing.)"""
    config = GraniteSpeech5Config(
        n_mels=8, emb_dim=16, nlayers=2, nheads=2, head_dim=8, context_size=8, max_pos_emb=8,
        conv_kernel_size=3, subsample_layers=(0,), src_vocab_size=12,
    )  # fmt: skip
    model = GraniteSpeech5(config)
    model.reset_parameters()
    model.post_init()
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled, eager = CTCDecoder(model, compile=True, backend=counter), CTCDecoder(model)
    for rows, graphs in ((2, 1), (5, 1), (1, 2), (17, 3)):
        for frames in (16, 21, 32, 50):
            x = torch.randn(rows, frames, config.input_dim)
            mask = torch.ones(rows, frames, dtype=torch.bool)
            mask[-1, frames // 2 :] = False
            features = CTCFeatures(x, mask)
            assert compiled(features) == eager(features)
        assert counter.frame_count == graphs
