"""The catalogue of bad or odd inputs (docs/reliability.md): each gets a clear error naming the
file, tensor or argument, raised by this package's own checks, or the reference's answer."""

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import transformers
from fms.models import get_model
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from torch._dynamo.testing import CompileCounterWithBackend

import granite_fms
from granite_fms.audio import longform
from granite_fms.audio.features import (
    AUDIO_SUFFIXES,
    AudioFeatures,
    GraniteSpeechFeatureExtractor,
    load_audio,
)
from granite_fms.audio.processor import GraniteSpeechProcessor, check_prompt_ids
from granite_fms.inference.compile import CompileConfig
from granite_fms.inference.generation import BucketPolicy, Generator
from granite_fms.models.conformer import ConformerConfig, ConformerEncoder
from granite_fms.models.granite_speech import ARCHITECTURE, _hf_to_fms_rope
from granite_fms.pipeline import SpeechPipeline
from granite_fms.testing import save_hf_checkpoint, tiny_hf_config
from helpers import RATE, audio_prompt, long_recording, n_tokens, rel_err

DATA = Path(__file__).parent / "data"
AUDIO_ID = 127  # the tiny 3.3 layout's <|audio|>; its vocabulary is 0..127


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(path: Path, edit, name: str = "model.safetensors") -> None:
    sd = load_file(path / name)
    edit(sd)
    save_file(sd, path / name, metadata={"format": "pt"})


def _both_loaders(path: Path):
    """The two ways in: this package's loader and FMS's registry."""
    return [
        lambda: granite_fms.load_model(path),
        lambda: get_model("hf_pretrained", model_path=str(path)),
    ]


def _logits_err(hf, fm) -> float:
    """Relative logit error against HF (HF's divided by logits_scaling), audio and adapter on."""
    torch.manual_seed(11)
    x = torch.randn(1, 33, 160)
    ids = audio_prompt(fm.config.audio_token_index, n_tokens(fm, 33))
    if hasattr(hf, "peft_config"):
        hf.enable_adapters()
    fm.eval().start_request(True)
    with torch.no_grad():
        ref = hf(input_ids=ids, input_features=x).logits / fm.config.text_config.logits_scaling
        return rel_err(ref, fm(ids, input_features=x))


@pytest.fixture(scope="module")
def pipe(pair_33) -> SpeechPipeline:
    return SpeechPipeline(pair_33[1])


# ----- audio ---------------------------------------------------------------------------------


def test_empty_wav_at_44k_is_the_empty_audio_error(tmp_path):
    """Checked before resampling, which used to fail with a torch reshape RuntimeError."""
    path = tmp_path / "empty44.wav"
    sf.write(path, np.zeros(0, np.float32), 44100)
    with pytest.raises(ValueError, match=r"empty audio \(0 samples\) in .*empty44\.wav"):
        GraniteSpeechFeatureExtractor()(path)


@pytest.mark.parametrize("peak", [1e20, 1e30])
def test_enormous_samples_are_an_overflow_error(peak):
    """Finite samples whose mel power overflows float32: HF returns inf features."""
    wave = torch.randn(16000)
    wave[100] = peak
    with pytest.raises(ValueError, match=r"audio\[1\]: the mel power overflows float32"):
        GraniteSpeechFeatureExtractor()([torch.zeros(16000), wave])


def test_int16_scaled_floats_warn_and_match_hf(caplog):
    wave = torch.randn(16000) * 32767
    with caplog.at_level(logging.WARNING, logger="granite_fms.audio.features"):
        ours = GraniteSpeechFeatureExtractor()(wave).input_features
    assert "audio[0]: peak sample" in caplog.text and "outside [-1, 1]" in caplog.text
    ref = transformers.GraniteSpeechFeatureExtractor()(wave)["input_features"]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n_mels=0), "n_mels must be a positive int, got 0"),
        (dict(hop_length=160.0), "hop_length must be a positive int, got 160.0"),
        (dict(win_length=600), r"win_length \(600\) must not exceed n_fft \(512\)"),
    ],
)
def test_bad_feature_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraniteSpeechFeatureExtractor(**kwargs)


def test_errors_name_a_file_by_its_path(tmp_path):
    path = tmp_path / "tiny.wav"
    sf.write(path, np.zeros(100, np.float32), 16000)
    with pytest.raises(ValueError, match=rf"^{path}: audio too short \(100 samples\)"):
        GraniteSpeechFeatureExtractor().waveform(path, index=3)


@pytest.mark.parametrize(
    ("fmt", "subtype", "suffix"),
    [("MP3", "MPEG_LAYER_III", "mp3"), ("OGG", "VORBIS", "ogg"), ("OGG", "OPUS", "opus")],
)
def test_compressed_formats_are_read(tmp_path, fmt, subtype, suffix):
    """Every suffix of AUDIO_SUFFIXES is a format the decoder reads, not only wav and flac."""
    wave, rate = sf.read(DATA / "fox_16k.wav")
    path = tmp_path / f"fox.{suffix}"
    sf.write(path, wave, rate, format=fmt, subtype=subtype)
    assert f".{suffix}" in AUDIO_SUFFIXES
    assert load_audio(path).numel() == len(wave)


# ----- the model's context ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_pipe(dirs) -> SpeechPipeline:
    """A checkpoint of 512 positions (text_config.max_expected_seq_len) with a tokenizer."""
    pipe = SpeechPipeline.from_pretrained(dirs[1])
    assert pipe.model.config.text_config.max_expected_seq_len == 512
    return pipe


def test_a_budget_past_the_positions_is_refused_before_any_cache(text_pipe):
    """It used to be an IndexError from fms/modules/positions.py (and 10**9 tokens a 128 GB
    cache allocation first)."""
    clip = DATA / "fox_16k.wav"
    for budget in (2000, 10**9):
        with pytest.raises(ValueError, match=r"request 0: its prompt \(\d+ tokens, audio inc"):
            text_pipe.generate_ids(clip, max_new_tokens=budget)
    with pytest.raises(ValueError, match=r"but the model has 512 .*; lower max_new_tokens to"):
        text_pipe.generate_ids(clip, max_new_tokens=2000)


def test_windows_and_budgets_are_fitted_to_the_positions(text_pipe, caplog):
    """A 30 s clip (about 300 audio tokens) with its 200-token budget does not fit 512
    positions: it is cut in two windows; a budget of 2000 is capped; both are warned of."""
    wave = long_recording()[0][: 30 * RATE]
    with caplog.at_level(logging.WARNING, logger="granite_fms.pipeline"):
        result = text_pipe.transcribe(wave, max_new_tokens=2000, return_segments=True)[0]
    assert len(result["segments"]) == 2
    assert "windows of 30 s do not fit the model's 512 positions" in caplog.text
    assert "max_new_tokens 2000 does not fit the model's 512 positions" in caplog.text
    prompt = text_pipe.prompts.user_turn("transcribe")
    fit = text_pipe.fit_context(prompt, 30.0, 2000)
    extractor = text_pipe.processor.feature_extractor
    for s in result["segments"]:
        samples = round((s["end"] - s["start"]) * RATE)
        assert fit.prompt_tokens + extractor.num_audio_tokens(samples) + len(s["tokens"]) <= 512


def test_fit_context_takes_the_longest_window_that_fits():
    def tokens(samples):
        return samples // 1600  # 10 audio tokens per second

    fit = longform.fit_context(30.0, None, 52, 512, tokens)
    need = [
        fit.prompt_tokens + tokens(int(s * 16000)) + longform.budget(s, False)
        for s in (fit.chunk_length, fit.chunk_length + 0.1)
    ]
    assert need[0] <= 512 < need[1] and fit.notes
    assert longform.fit_context(30.0, 3, 52, 512, tokens) == longform.ContextFit(30.0, 52, 512)
    with pytest.raises(ValueError, match=r"the prompt \(600 tokens\) leaves no room for 1 s"):
        longform.fit_context(30.0, None, 600, 512, tokens)


def test_a_prompt_longer_than_the_positions_is_refused(text_pipe):
    with pytest.raises(ValueError, match=r"the prompt \(\d+ tokens\) leaves no room"):
        text_pipe.transcribe(DATA / "fox_16k.wav", keywords=["word " * 2000])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_beams=2.5), r"num_beams must be a positive int \(at least 1\), got 2.5"),
        (dict(batch_size="4"), r"batch_size must be a positive int \(at least 1\), got '4'"),
        (dict(max_new_tokens=True), "max_new_tokens must be a positive int"),
    ],
)
def test_decoding_options_of_the_wrong_type(text_pipe, kwargs, match):
    """They used to fail deep inside torch."""
    with pytest.raises(ValueError, match=match):
        text_pipe.transcribe(DATA / "fox_16k.wav", **kwargs)


@pytest.mark.parametrize("language", ["", "   ", None])
def test_a_blank_target_language(text_pipe, language):
    with pytest.raises(ValueError, match="needs a target language"):
        text_pipe.translate(DATA / "fox_16k.wav", language)


# ----- prompts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt_ids", "error", "match"),
    [
        ([[]], ValueError, "prompt 0 is empty"),
        ([[1, 2], []], ValueError, "prompt 1 is empty"),
        ([], ValueError, "empty list of prompts"),
        ("1 5 6", TypeError, "prompt_ids must be token ids.*got a str.*prompt="),
        (["1 5", "6"], TypeError, "prompt 0 must be a list of token ids, got a str"),
        ([1, 128], ValueError, r"position 1: token id 128 is outside.*vocabulary \(ids 0 to 127\)"),
        ([1, -1], ValueError, "position 1: token id -1 is outside"),
        ([1, 2.5], TypeError, "position 1: token id 2.5 is a float, not an int"),
        ([1, True], TypeError, "token id True is a bool"),
        (torch.tensor([1.0, 2.0]), TypeError, "token id 1.0 is a float"),
        (42, TypeError, "prompt_ids must be a list of token ids.*got int"),
    ],
)
def test_bad_prompt_ids(pipe, prompt_ids, error, match):
    with pytest.raises(error, match=match):
        pipe.generate_ids(prompt_ids=prompt_ids, max_new_tokens=2)


def test_prompt_ids_forms_that_are_accepted():
    """Lists, tuples, tensors and numpy ids; the audio id may lie past the vocabulary."""
    want = [[1, 2, 3]]
    for ids in ([1, 2, 3], (1, 2, 3), torch.tensor([1, 2, 3]), np.array([1, 2, 3]), [want[0]]):
        assert check_prompt_ids(ids, 128, 127) == want
    assert check_prompt_ids([torch.tensor([1, 128])], vocab_size=128, audio_token_id=128) == [
        [1, 128]
    ]


def test_empty_text_prompt(tmp_path, pair_33):
    words = ["<|end_of_text|>", "<unk>", "hello"] + [f"w{i}" for i in range(124)] + ["<|audio|>"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", additional_special_tokens=["<|audio|>"]
    )
    pipe = SpeechPipeline(pair_33[1], GraniteSpeechProcessor(tokenizer=fast))
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        pipe.generate(prompt="", chat_template=False, max_new_tokens=2)


def test_compiled_generator_validates_on_the_host(pair_33):
    """Bad requests are refused before any graph is compiled or run (on CUDA an in-graph
    device assert would end the process's CUDA context)."""
    _, fm = pair_33
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    gen = Generator(fm, compile=CompileConfig(backend=counter))
    feats = AudioFeatures(
        torch.randn(1, 30, 160), torch.ones(1, 30, dtype=torch.bool), torch.tensor([6])
    )
    wrong_count = audio_prompt(AUDIO_ID, n_tokens(fm, 30) - 1)[0]
    with pytest.raises(ValueError, match="audio placeholders and audio embeddings do not match"):
        gen.generate([wrong_count], feats, max_new_tokens=2)
    out_of_vocab = torch.tensor([1, 128, 2])
    with pytest.raises(ValueError, match="token id 128 is outside"):
        gen.generate([out_of_vocab], max_new_tokens=2)
    assert counter.frame_count == 0


def test_text_only_embedding_maps_placeholders_to_id_0_as_hf(tmp_path):
    """A vocabulary that ends where the audio id begins (4.x layout): HF looks up id 0."""
    config = tiny_hf_config("4.x", text_config=dict(vocab_size=100), audio_token_index=100)
    hf = save_hf_checkpoint(tmp_path, config, lora_rank=None, seed=4)
    fm = granite_fms.load_model(tmp_path)
    ids = torch.tensor([[1, 100, 2, 100]])
    seen = {}
    hook = hf.model.language_model.register_forward_pre_hook(
        lambda _, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.no_grad():
        hf(input_ids=ids)
        hook.remove()
        ours = fm.embed_inputs(ids)
    assert torch.equal(ours, seen["embeds"])


# ----- checkpoint files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sharded")
    save_hf_checkpoint(path, tiny_hf_config("3.3"), lora_rank=None, seed=5, max_shard_size="60KB")
    return path


@pytest.mark.parametrize("name", ["model.safetensors.index.json", "adapter_config.json"])
def test_file_that_is_not_json(ckpt_33, sharded, tmp_path, name):
    source = sharded if name.startswith("model.") else ckpt_33
    path = _copy(source, tmp_path / "ck")
    (path / name).write_text("{not json")
    for load in _both_loaders(path):
        with pytest.raises(ValueError, match=rf"{name} is not valid JSON"):
            load()


def test_config_json_that_is_not_json(ckpt_33, tmp_path):
    """get_model("hf_pretrained") reads config.json in transformers before any code of ours
    runs: there it is transformers' OSError, which names the file too."""
    path = _copy(ckpt_33, tmp_path / "ck")
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        granite_fms.load_model(path)
    with pytest.raises(OSError, match="config.json' is not a valid JSON file"):
        get_model("hf_pretrained", model_path=str(path))


def test_truncated_safetensors(ckpt_33, tmp_path):
    path = _copy(ckpt_33, tmp_path / "ck")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    for load in _both_loaders(path):
        with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors"):
            load()
    # With an explicit architecture FMS opens the files before any code of this package runs.
    with pytest.raises(SafetensorError, match="incomplete metadata"):
        get_model(ARCHITECTURE, "tiny", model_path=str(path), source="hf")


def test_llm_k_proj_of_the_wrong_shape(ckpt_33, tmp_path):
    """Checked before FMS's QKV fusion (a RuntimeError) and its RoPE permutation."""
    path = _copy(ckpt_33, tmp_path / "ck")
    key = "language_model.model.layers.0.self_attn.k_proj.weight"
    _edit(path, lambda sd: sd.update({key: torch.zeros(8, 64)}))
    name = r"shape mismatch for language_model\.base_model\.layers\.0\.attn\.in_proj\.key\.weight"
    expects = r"the model expects \(32, 64\), the checkpoint has \(8, 64\)"
    with pytest.raises(ValueError, match=rf"{name}: {expects} \(from .*model\.safetensors:{key}"):
        granite_fms.load_model(path)
    with pytest.raises(ValueError, match=f"{name}: {expects}"):
        get_model("hf_pretrained", model_path=str(path))


@pytest.mark.parametrize(
    ("key", "present", "absent"),
    [
        ("self_attn.k_proj.weight", "q_proj.weight', 'self_attn.v_proj.weight", "k_proj.weight"),
        ("mlp.gate_proj.weight", "up_proj.weight", "gate_proj.weight"),
    ],
)
def test_missing_llm_tensor_of_a_fused_group(ckpt_33, tmp_path, key, present, absent):
    """Checked before the fusion, which used to raise a bare KeyError."""
    path = _copy(ckpt_33, tmp_path / "ck")
    _edit(path, lambda sd: sd.pop(f"language_model.model.layers.1.{key}"))
    for load in _both_loaders(path):
        with pytest.raises(ValueError, match=rf"LLM layer 1 .*{present}.* but not .*{absent}"):
            load()


def test_adapter_with_v_but_not_q_lora_a(ckpt_33, tmp_path):
    path = _copy(ckpt_33, tmp_path / "ck")
    _edit(
        path,
        lambda sd: sd.pop(
            "base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
        ),
        "adapter_model.safetensors",
    )
    for load in _both_loaders(path):
        with pytest.raises(ValueError, match=r"v_proj\.lora_A'\] but not \['self_attn\.q_proj"):
            load()


def test_adapter_config_with_a_non_numeric_rank(ckpt_33, tmp_path):
    path = _copy(ckpt_33, tmp_path / "ck")
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["r"] = "4"
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unsupported LoRA adapter.*r '4' \(a number"):
        granite_fms.load_model(path)


def test_orphaned_shards_refused_for_an_explicit_architecture(sharded, tmp_path):
    """get_model(ARCH, variant, model_path=..., source="hf") globs every shard, too."""
    path = _copy(sharded, tmp_path / "ck")
    shutil.copy(path / sorted(path.glob("model-*.safetensors"))[0].name, path / "old.safetensors")
    with pytest.raises(ValueError, match=r"does not list: \['old\.safetensors'\]"):
        get_model(ARCHITECTURE, "tiny", model_path=str(path), source="hf")


def test_rope_permutation_needs_the_config():
    """It used to fall back to the 2b head size, the wrong permutation for other variants."""
    sd = {"language_model.base_model.layers.0.attn.in_proj.query.weight": torch.zeros(64, 64)}
    with pytest.raises(ValueError, match="hf_to_fms_rope needs model_config"):
        _hf_to_fms_rope(sd)


# ----- head tying: transformers' rule is the top-level tie_word_embeddings ------------------


@pytest.mark.parametrize(("top", "text"), [(True, False), (False, True)])
def test_tying_follows_the_top_level_flag(tmp_path, top, text):
    """HF's own tester config (top True, text False) and its mirror; both loaders = HF."""
    config = tiny_hf_config(
        "3.3", text_config=dict(tie_word_embeddings=text), tie_word_embeddings=top
    )
    hf = save_hf_checkpoint(tmp_path, config, lora_rank=None, seed=3)
    for load in _both_loaders(tmp_path):
        fm = load()
        assert fm.config.text_config.tie_heads is top
        assert _logits_err(hf, fm) < 1e-5


@pytest.fixture(scope="module")
def untied(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("untied")
    config = tiny_hf_config("4.x")
    save_hf_checkpoint(path, config, lora_rank=None, seed=2)
    return path


def test_untied_config_without_a_head_tensor(untied, tmp_path):
    path = _copy(untied, tmp_path / "ck")
    _edit(path, lambda sd: sd.pop("language_model.lm_head.weight"))
    for load in _both_loaders(path):
        with pytest.raises(ValueError, match="tie_word_embeddings=false.*no lm_head.weight"):
            load()


def test_tied_config_with_a_different_head_tensor(untied, tmp_path):
    path = _copy(untied, tmp_path / "ck")
    cfg = json.loads((path / "config.json").read_text())
    cfg["tie_word_embeddings"] = True
    (path / "config.json").write_text(json.dumps(cfg))
    for load in _both_loaders(path):
        with pytest.raises(ValueError, match="tie_word_embeddings=true.*differs from embed_tokens"):
            load()


def test_tied_config_with_an_equal_head_tensor_loads(ckpt_33, pair_33, tmp_path):
    """A checkpoint that stores the tied head as well (same values) is the tied model."""
    path = _copy(ckpt_33, tmp_path / "ck")
    _edit(
        path,
        lambda sd: sd.update(
            {
                "language_model.lm_head.weight": sd[
                    "language_model.model.embed_tokens.weight"
                ].clone()
            }
        ),
    )
    hf, fm = pair_33
    for load in _both_loaders(path):
        assert _logits_err(hf, load()) < 1e-5


# ----- preprocessor_config.json, checked against config.json ---------------------------------


@pytest.fixture(scope="module")
def with_preprocessor(ckpt_33, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prep") / "ck"
    shutil.copytree(ckpt_33, path)
    transformers.GraniteSpeechFeatureExtractor().save_pretrained(path)
    return path


def _edit_preprocessor(src: Path, dst: Path, **changes) -> Path:
    path = _copy(src, dst)
    cfg = json.loads((path / "preprocessor_config.json").read_text())
    for key, value in changes.items():
        if key.startswith("melspec_"):
            cfg["melspec_kwargs"][key[len("melspec_") :]] = value
        else:
            cfg[key] = value
    (path / "preprocessor_config.json").write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (
            dict(projector_window_size=10),
            "projector_window_size = 10 in preprocessor_config.json but window_size = 15",
        ),
        (
            dict(projector_downsample_rate=3),
            "projector_downsample_rate = 3 in preprocessor_config.json but downsample_rate = 5",
        ),
        (
            dict(n_mels=64, melspec_n_mels=64),
            r"2 \* n_mels \(stacked frames\) = 128 .* encoder_config.input_dim = 160",
        ),
        (dict(melspec_hop_length=320), "melspec_kwargs.hop_length is 320 but .* hop_length=160"),
        (dict(feature_extractor_type="WhisperFeatureExtractor"), "'WhisperFeatureExtractor'"),
        (dict(n_fft="512"), "n_fft must be a positive int, got '512'"),
    ],
)
def test_preprocessor_config_that_disagrees(with_preprocessor, tmp_path, changes, match):
    path = _edit_preprocessor(with_preprocessor, tmp_path / "ck", **changes)
    with pytest.raises(ValueError, match=match):
        SpeechPipeline.from_pretrained(path)


def test_preprocessor_config_not_json(with_preprocessor, tmp_path):
    path = _copy(with_preprocessor, tmp_path / "ck")
    (path / "preprocessor_config.json").write_text("{")
    with pytest.raises(ValueError, match="preprocessor_config.json is not valid JSON"):
        GraniteSpeechProcessor.from_pretrained(path)


def test_preprocessor_config_settings_are_used_as_hf_uses_them(with_preprocessor, tmp_path):
    """A consistent file with other mel settings: features equal HF's extractor loaded from it."""
    path = _edit_preprocessor(
        with_preprocessor, tmp_path / "ck", hop_length=128, melspec_hop_length=128
    )
    ours = GraniteSpeechProcessor.from_pretrained(path).feature_extractor
    ref = transformers.GraniteSpeechFeatureExtractor.from_pretrained(path)
    wave = torch.randn(8000)
    got, want = ours(wave), ref(wave)
    assert ours.hop_length == 128
    torch.testing.assert_close(got.input_features, want["input_features"], atol=1e-5, rtol=0)
    assert got.audio_token_counts.tolist() == want["audio_embed_sizes"]


def test_without_preprocessor_config_window_comes_from_config_json(tmp_path):
    config = tiny_hf_config("3.3", window_size=10, downsample_rate=2)
    config.save_pretrained(tmp_path)
    extractor = GraniteSpeechProcessor.from_pretrained(tmp_path).feature_extractor
    assert (extractor.window_size, extractor.downsample_rate, extractor.n_mels) == (10, 2, 80)


# ----- BucketPolicy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(audio_frames=(200.0, 400.0)), r"audio_frames buckets must be a tuple of ints"),
        (dict(batch="124"), "batch buckets must be a tuple of ints, got '124'"),
        (dict(prompt_tokens=(True, 64)), "prompt_tokens buckets must be a tuple of ints"),
        (dict(cache_tokens=256.0), "cache_tokens must be an int, got 256.0"),
    ],
)
def test_bucket_policy_refuses_non_integers(kwargs, match):
    with pytest.raises(TypeError, match=match):
        BucketPolicy(**kwargs)


def test_bucket_policy_takes_lists_as_tuples():
    assert BucketPolicy(batch=[1, 2]).batch == (1, 2)


@pytest.mark.parametrize("layers", [(1, 1), (0, 4)])
def test_cat_hidden_layers_must_be_distinct_layers(layers):
    config = ConformerConfig(emb_dim=32, nlayers=4, nheads=2, head_dim=16, cat_hidden_layers=layers)
    with (
        torch.device("meta"),
        pytest.raises(ValueError, match=r"must be distinct .*\[0, nlayers = 4\)"),
    ):
        ConformerEncoder(config)


def test_projector_width_must_match_the_concatenated_encoder():
    config = granite_fms.GraniteSpeechConfig(
        encoder_config=ConformerConfig(cat_hidden_layers=(0,)),
    )
    with torch.device("meta"), pytest.raises(ValueError, match=r"encoder_dim \(1024\) .* = 2048"):
        granite_fms.GraniteSpeech(config)


# ----- an FMS that registers its own granite_speech (FMS pull request #499) -----------------

_COEXIST = textwrap.dedent(
    """
    import logging, sys
    import torch.nn as nn
    from fms import models
    from fms.models.hf.config_utils import _FMS_MODEL_CONFIG_REGISTRY
    from fms.utils import serialization

    class FmsGraniteSpeech(nn.Module):
        def __init__(self, **kwargs):
            super().__init__()

    # What FMS pull request #499 registers.
    for variant in ("3.3-8b", "3.2-8b", "3.3-2b"):
        models.register_model("granite_speech", variant, lambda **kw: FmsGraniteSpeech())
    serialization.register_adapter_step("granite_speech", "hf_to_fms_names", lambda sd, **kw: sd)
    serialization.register_adapter("granite_speech", "hf", ["hf_to_fms_names"])
    _FMS_MODEL_CONFIG_REGISTRY.register_model_arch_info(
        "GraniteSpeechForConditionalGeneration", "granite_speech", lambda config: {}
    )
    logging.basicConfig(level=logging.WARNING)

    import granite_fms
    from fms.models import get_model

    print("ARCHITECTURE", granite_fms.ARCHITECTURE)
    print("explicit", type(get_model("granite_speech", "3.3-2b")).__name__)
    print("ours", type(get_model(granite_fms.ARCHITECTURE, "tiny")).__name__)
    print("hf_pretrained", type(get_model("hf_pretrained", model_path=sys.argv[1])).__name__)
    print("load_model", type(granite_fms.load_model(sys.argv[1])).__name__)
    """
)


def test_coexists_with_an_fms_that_registers_granite_speech(ckpt_33):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run(
        [sys.executable, "-c", _COEXIST, str(ckpt_33)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())
    assert lines == {
        "ARCHITECTURE": "granite_speech_fms",
        "explicit": "FmsGraniteSpeech",
        "ours": "GraniteSpeech",
        "hf_pretrained": "GraniteSpeech",
        "load_model": "GraniteSpeech",
    }
    assert "FMS already registers a 'granite_speech' architecture" in run.stderr
    assert "granite_fms replaces that with its own 'granite_speech_fms'" in run.stderr


def test_this_fms_has_no_granite_speech_of_its_own():
    """ibm-fms 1.13.1: the name is free, so ours keeps it."""
    assert ARCHITECTURE == "granite_speech"
