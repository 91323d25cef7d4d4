"""Feature extraction and processor: parity with HF, batching, file inputs, input checks."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from granite_fms.audio.features import (
    AudioFeatures,
    GraniteSpeechFeatureExtractor,
    audio_token_count,
    encoder_frame_count,
    load_audio,
)
from granite_fms.audio.processor import GraniteSpeechProcessor

DATA = Path(__file__).parent / "data"
CLIPS_16K = ["fox_16k.wav", "short_16k.wav", "long_16k.wav"]
# HF is run one clip at a time, so the two compute the same ops on the same input: the measured
# max abs difference is 0.0 on every clip below; atol leaves room for other torch builds.
ATOL = 1e-5


def read(name: str) -> torch.Tensor:
    """Raw file samples as float32, shape (frames,) or (frames, channels)."""
    data, _ = sf.read(DATA / name, dtype="float32")
    return torch.from_numpy(data)


@pytest.fixture(scope="module")
def ours() -> GraniteSpeechFeatureExtractor:
    return GraniteSpeechFeatureExtractor()


@pytest.fixture(scope="module")
def hf() -> transformers.GraniteSpeechFeatureExtractor:
    return transformers.GraniteSpeechFeatureExtractor()


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    """About 7 s of speech to cut clips of exact lengths from."""
    return torch.cat([read("long_16k.wav"), read("fox_16k.wav")])


def assert_matches_hf(ours, hf, wave: torch.Tensor) -> None:
    got = ours(wave)
    want = hf(wave)
    assert got.input_features.shape == want["input_features"].shape
    torch.testing.assert_close(got.input_features, want["input_features"], atol=ATOL, rtol=0)
    assert got.audio_token_counts.tolist() == want["audio_embed_sizes"]
    assert got.input_features_mask.all()


@pytest.mark.parametrize("name", [*CLIPS_16K, "short_22k.wav", "fox_stereo.flac"])
def test_fixture_clips_match_hf(ours, hf, name):
    assert_matches_hf(ours, hf, load_audio(DATA / name))


# Encoder frames: 1 (the minimum), 30 = 2*15, 61, 200 (both 160*400-1 and 160*400 samples),
# 225 = 15*15, 226, 400 = 2*200.
LENGTHS = [257, 160 * 30 * 2, 19500, 160 * 400 - 1, 160 * 400, 160 * 449, 72333, 160 * 800]


@pytest.mark.parametrize("num_samples", LENGTHS)
def test_exact_lengths_match_hf(ours, hf, speech, num_samples):
    wave = speech.repeat(2)[:num_samples]
    assert_matches_hf(ours, hf, wave)
    assert ours(wave).input_features.shape[1] == encoder_frame_count(num_samples)


def test_noise_matches_hf(ours, hf):
    generator = torch.Generator().manual_seed(0)
    assert_matches_hf(ours, hf, 0.1 * torch.randn(160 * 300 + 7, generator=generator))


def test_token_counts_match_hf(ours, hf):
    lengths = list(range(257, 400_000, 997)) + [160 * 30 * k + d for k in (1, 2) for d in (-1, 0)]
    want = hf._get_num_audio_features(lengths)
    assert [audio_token_count(n) for n in lengths] == want
    assert [ours.num_audio_tokens(n) for n in lengths] == want


def test_frame_and_token_arithmetic():
    assert encoder_frame_count(160 * 60) == 30
    assert audio_token_count(160 * 60) == 6  # 30 frames = 2 windows of 15 -> 2 * 3 tokens
    assert audio_token_count(160 * 62) == 9  # 31 frames -> a third, partial window
    assert audio_token_count(160 * 60, window_size=10, downsample_rate=2) == 15


def test_batch_rows_equal_single_clips(ours):
    waves = [read(name) for name in ["long_16k.wav", "short_16k.wav", "fox_16k.wav"]]
    batch = ours(waves)
    lengths = [encoder_frame_count(w.numel()) for w in waves]
    assert batch.input_features.shape == (3, max(lengths), 160)
    assert batch.input_features.dtype == torch.float32
    assert batch.input_features_mask.dtype == torch.bool
    assert batch.input_features_mask.sum(dim=1).tolist() == lengths
    assert batch.audio_token_counts.dtype == torch.int64
    for i, (wave, length) in enumerate(zip(waves, lengths, strict=True)):
        single = ours(wave)
        assert torch.equal(batch.input_features[i, :length], single.input_features[0])
        assert batch.input_features_mask[i, :length].all()
        assert not batch.input_features_mask[i, length:].any()
        assert (batch.input_features[i, length:] == 0).all()
        assert batch.audio_token_counts[i] == single.audio_token_counts[0]


def test_hf_batching_changes_last_frame(ours, hf):
    """Why we extract clip by clip: HF zero-pads the batch before the STFT."""
    generator = torch.Generator().manual_seed(0)
    short, long = (0.1 * torch.randn(n, generator=generator) for n in (19500, 72333))
    single = hf(short)["input_features"][0]
    in_batch = hf([short, long])["input_features"][0, : len(single)]
    torch.testing.assert_close(in_batch[:-1], single[:-1], atol=ATOL, rtol=0)
    assert (in_batch[-1] - single[-1]).abs().max() > 0.01
    ours_in_batch = ours([short, long]).input_features[0, : len(single)]
    torch.testing.assert_close(ours_in_batch, single, atol=ATOL, rtol=0)


def test_numpy_tuple_and_float64_inputs(ours):
    wave = read("short_16k.wav")
    want = ours(wave).input_features
    assert torch.equal(ours(wave.numpy()).input_features, want)
    assert torch.equal(ours((wave.numpy(),)).input_features, want)
    assert torch.equal(ours(wave.double()).input_features, want)
    assert torch.equal(ours(wave, sampling_rate=16000).input_features, want)


def test_audio_features_as_kwargs(ours):
    features = ours([read("short_16k.wav"), read("fox_16k.wav")])

    def model(input_features, input_features_mask):
        return input_features, input_features_mask

    x, mask = model(**features)
    assert x is features.input_features and mask is features.input_features_mask
    assert set(features.as_dict()) == {"input_features", "input_features_mask"}
    moved = features.to("cpu", torch.bfloat16)
    assert isinstance(moved, AudioFeatures)
    assert moved.input_features.dtype == torch.bfloat16
    assert moved.input_features_mask.dtype == torch.bool
    assert moved.audio_token_counts.dtype == torch.int64


def test_wav_path_equals_array(ours):
    path = DATA / "fox_16k.wav"
    want = ours(read("fox_16k.wav")).input_features
    assert torch.equal(ours(path).input_features, want)
    assert torch.equal(ours(str(path)).input_features, want)


def test_22k_file_is_resampled(ours):
    raw = read("short_22k.wav")
    assert sf.info(DATA / "short_22k.wav").samplerate == 22050
    expected = torchaudio.functional.resample(raw, 22050, 16000)
    loaded = load_audio(DATA / "short_22k.wav")
    torch.testing.assert_close(loaded, expected, atol=0, rtol=0)
    assert torch.equal(ours(DATA / "short_22k.wav").input_features, ours(expected).input_features)


def test_stereo_flac_is_downmixed(ours):
    raw = read("fox_stereo.flac")
    assert raw.shape == (38400, 2)
    loaded = load_audio(DATA / "fox_stereo.flac")
    assert loaded.dtype == torch.float32 and loaded.shape == (38400,)
    torch.testing.assert_close(loaded, raw.mean(dim=1), atol=0, rtol=0)
    assert torch.equal(ours(DATA / "fox_stereo.flac").input_features, ours(loaded).input_features)


def test_missing_and_unreadable_files(ours, tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        load_audio(missing)
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        ours(missing)
    bogus = tmp_path / "bogus.wav"
    bogus.write_text("not audio")
    with pytest.raises(ValueError, match="could not read audio file.*bogus.wav"):
        ours(bogus)


@pytest.mark.parametrize(
    ("audio", "kwargs", "match"),
    [
        (np.zeros(0, np.float32), {}, "empty audio"),
        (torch.zeros(0), {}, "empty audio"),
        (torch.zeros(100), {}, "too short.*at least 257 samples"),
        (torch.tensor([0.0, float("nan")]).repeat(200), {}, "NaN or inf"),
        (torch.tensor([0.0, float("inf")]).repeat(200), {}, "NaN or inf"),
        (np.zeros(16000, np.int16), {}, r"convert to float in \[-1, 1\]"),
        (torch.zeros(16000, dtype=torch.int32), {}, r"convert to float in \[-1, 1\]"),
        (np.zeros((2, 16000), np.float32), {}, r"ambiguous: stereo or a batch\?.*mean\(axis=0\)"),
        (torch.zeros(1, 1, 16000), {}, "ambiguous"),
        (torch.zeros(16000), {"sampling_rate": 8000}, "expected 16000 Hz, got 8000.*resample"),
        ([], {}, "empty list"),
        ([torch.zeros(16000), torch.zeros(10)], {}, r"audio\[1\]: audio too short"),
    ],
)
def test_bad_inputs_raise_value_error(ours, audio, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ours(audio, **kwargs)


@pytest.mark.parametrize("audio", [42, [0.1, 0.2], b"bytes"])
def test_unsupported_types_raise_type_error(ours, audio):
    with pytest.raises(TypeError, match="unsupported type"):
        ours(audio)


# Processor


def test_expand_audio_tokens():
    processor = GraniteSpeechProcessor()
    assert processor.expand_audio_tokens("<|audio|> hi", [3]) == ["<|audio|><|audio|><|audio|> hi"]
    got = processor.expand_audio_tokens(["a <|audio|>", "<|audio|> b"], [1, 2])
    assert got == ["a <|audio|>", "<|audio|><|audio|> b"]


@pytest.mark.parametrize(
    ("text", "counts", "match"),
    [
        (["<|audio|>", "<|audio|>"], [3], "2 prompts and 1 audio clips"),
        (
            ["<|audio|>", "no placeholder"],
            [3, 4],
            r"prompt 1 has 0 audio placeholders \(<\|audio\|>\).*exactly 1",
        ),
        ("<|audio|><|audio|>", [3], "prompt 0 has 2"),
    ],
)
def test_expand_audio_tokens_mismatch(text, counts, match):
    with pytest.raises(ValueError, match=match):
        GraniteSpeechProcessor().expand_audio_tokens(text, counts)


def test_expand_audio_token_ids():
    expand = GraniteSpeechProcessor.expand_audio_token_ids
    assert expand([1, 2, 99, 3], 99, 3).tolist() == [1, 2, 99, 99, 99, 3]
    assert expand(torch.tensor([99, 5]), 99, 2).tolist() == [99, 99, 5]
    with pytest.raises(ValueError, match=r"has 0 audio placeholders \(token id 99\)"):
        expand([1, 2, 3], 99, 3)
    with pytest.raises(ValueError, match=r"has 2 audio placeholders \(token id 99\)"):
        expand([99, 2, 99], 99, 3)
    with pytest.raises(ValueError, match="1-D"):
        expand(torch.tensor([[99]]), 99, 3)


def test_processor_without_tokenizer():
    processor = GraniteSpeechProcessor()
    with pytest.raises(ValueError, match="tokenizer is needed"):
        processor("<|audio|> transcribe", read("short_16k.wav"))
    with pytest.raises(ValueError, match="nothing to process"):
        processor(None)
    out = processor(None, read("short_16k.wav"))
    assert set(out) == {"input_features", "input_features_mask"}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    words = ["<unk>", "<pad>", "<|audio|>", "transcribe", "the", "speech", "please", "hello"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        additional_special_tokens=["<|audio|>"],
    )
    path = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(path)
    return path


def test_processor_with_tokenizer(tokenizer_dir):
    processor = GraniteSpeechProcessor.from_pretrained(tokenizer_dir)
    assert processor.tokenizer is not None
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|audio|>")
    waves = [read("short_16k.wav"), read("fox_16k.wav")]
    out = processor(["<|audio|> transcribe the speech please", "<|audio|> hello"], waves)
    assert set(out) == {"input_ids", "attention_mask", "input_features", "input_features_mask"}
    counts = [15, 24]  # 61 and 120 encoder frames
    assert (out["input_ids"] == audio_id).sum(dim=1).tolist() == counts
    # Left padding: row 0 is 15 + 4 tokens long, row 1 is 24 + 1 and sets the width.
    assert out["input_ids"].shape == (2, 25)
    assert out["attention_mask"].sum(dim=1).tolist() == [19, 25]
    assert out["attention_mask"][0, :6].sum() == 0 and out["attention_mask"][0, 6:].all()
    assert out["input_features_mask"].sum(dim=1).tolist() == [61, 120]


def test_processor_text_only(tokenizer_dir):
    processor = GraniteSpeechProcessor.from_pretrained(tokenizer_dir)
    out = processor("hello the speech")
    assert set(out) == {"input_ids", "attention_mask"}
    assert out["input_ids"].shape == (1, 3)
    with pytest.raises(
        ValueError, match=r"prompt 0 has 1 audio placeholders \(<\|audio\|>\); no audio was given"
    ):
        processor("<|audio|> hello")


def test_processor_rejects_tokenizer_without_audio_token(tokenizer_dir):
    processor = GraniteSpeechProcessor.from_pretrained(tokenizer_dir, audio_token="<|speech|>")
    with pytest.raises(ValueError, match=r"is <\|speech\|> a special token"):
        processor("<|speech|> hello", read("short_16k.wav"))


def test_from_pretrained_without_tokenizer_files(tmp_path):
    assert GraniteSpeechProcessor.from_pretrained(tmp_path).tokenizer is None
