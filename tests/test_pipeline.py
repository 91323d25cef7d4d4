"""SpeechPipeline: greedy tokens equal HF's `generate`, text mode, batching, text-only, errors.

The checkpoint is the tiny 3.3 layout (LoRA r=4, `<|audio|>` = 127) with untied embeddings:
with tied ones and random weights greedy decoding repeats one token from the first step, which
would not show a wrong continuation. Its tokenizer is a word-level one whose 128 ids are the
model's vocabulary, with a Granite-like chat template and EOS `<|end_of_text|>` = 0.
"""

import shutil
from pathlib import Path

import pytest
import torch
import transformers

from granite_fms.app.demo import word_tokenizer
from granite_fms.audio.features import load_audio
from granite_fms.audio.processor import GraniteSpeechProcessor
from granite_fms.audio.prompts import PRESETS, PromptPreset
from granite_fms.pipeline import SpeechPipeline
from granite_fms.testing import load_hf_model
from helpers import AUDIO_ID, EOS_ID, set_generation_eos

DATA = Path(__file__).parent / "data"
FOX, SHORT = DATA / "fox_16k.wav", DATA / "short_16k.wav"  # 120 and 61 encoder frames
PROMPT_IDS = [1, 5, 6, AUDIO_ID, 7, 8]
NEW = 12


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe_ids(dirs) -> SpeechPipeline:
    return SpeechPipeline.from_pretrained(dirs[0])


@pytest.fixture(scope="module")
def pipe_text(dirs) -> SpeechPipeline:
    return SpeechPipeline.from_pretrained(dirs[1])


@pytest.fixture(scope="module")
def hf(dirs):
    model = load_hf_model(dirs[0])
    model.generation_config.eos_token_id = None
    return model


def hf_generate(hf, prompt_ids: list[int], clip: Path | None = None, **kwargs) -> list[int]:
    """HF's tokens for one request (greedy, unless `kwargs` say otherwise), its own feature
    extractor on the clip."""
    features = None
    ids = prompt_ids
    if clip is not None:
        extracted = transformers.GraniteSpeechFeatureExtractor()(load_audio(clip))
        features = extracted["input_features"]
        pos = prompt_ids.index(AUDIO_ID)
        n = extracted["audio_embed_sizes"][0]
        ids = prompt_ids[:pos] + [AUDIO_ID] * n + prompt_ids[pos + 1 :]
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor([ids]),
            input_features=features,
            max_new_tokens=NEW,
            do_sample=False,
            pad_token_id=0,
            **kwargs,
        )
    return out[0, len(ids) :].tolist()


def chat_ids(text: str) -> list[int]:
    tok = word_tokenizer()
    messages = PRESETS["3.3"].messages(text)
    return tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))[
        "input_ids"
    ]


# (a) token ids without a tokenizer equal HF


def test_from_pretrained_without_tokenizer(pipe_ids):
    assert pipe_ids.tokenizer is None and pipe_ids.eos_token_id == ()
    assert pipe_ids.device == torch.device("cpu") and pipe_ids.dtype == torch.float32
    assert pipe_ids.audio_token_id == AUDIO_ID


@pytest.mark.parametrize("clip", [FOX, SHORT])
def test_token_ids_match_hf_generate(pipe_ids, hf, clip):
    got = pipe_ids.generate_ids(clip, prompt_ids=PROMPT_IDS, max_new_tokens=NEW)
    want = hf_generate(hf, PROMPT_IDS, clip)
    assert got == [want]
    assert len(set(want)) > 1  # a varied continuation, not one token repeated


def test_audio_as_array_equals_path(pipe_ids):
    from_path = pipe_ids.generate_ids(FOX, prompt_ids=PROMPT_IDS, max_new_tokens=NEW)
    from_array = pipe_ids.generate_ids(
        load_audio(FOX).numpy(), prompt_ids=PROMPT_IDS, max_new_tokens=NEW
    )
    assert from_array == from_path


def test_text_only_ids_match_hf_and_turn_adapter_off(pipe_ids, hf):
    ids = [1, 5, 6, 7, 8]
    pipe_ids.generate_ids(FOX, prompt_ids=PROMPT_IDS, max_new_tokens=1)
    assert pipe_ids.model.adapter_active
    assert pipe_ids.generate_ids(prompt_ids=ids, max_new_tokens=NEW) == [hf_generate(hf, ids)]
    assert not pipe_ids.model.adapter_active


def test_eos_stops_and_is_stripped(dirs, pipe_ids):
    full = pipe_ids.generate_ids(FOX, prompt_ids=PROMPT_IDS, max_new_tokens=NEW)[0]
    eos = next(t for t in full if t != full[0])
    stopping = SpeechPipeline(pipe_ids.model, eos_token_id=eos)
    got = stopping.generate_ids(FOX, prompt_ids=PROMPT_IDS, max_new_tokens=NEW)
    assert got == [full[: full.index(eos)]]


def test_bf16_pipeline_runs(dirs):
    pipe = SpeechPipeline.from_pretrained(dirs[0], dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16
    out = pipe.generate_ids([FOX, SHORT], prompt_ids=PROMPT_IDS, max_new_tokens=NEW)
    assert [len(row) for row in out] == [NEW, NEW]


# (b) text in, text out


def test_transcribe_with_chat_template(pipe_text, pipe_ids):
    assert pipe_text.tokenizer is not None and pipe_text.eos_token_id == (EOS_ID,)
    text = pipe_text.transcribe([FOX, SHORT], max_new_tokens=NEW)
    ids = pipe_text.generate_ids([FOX, SHORT], max_new_tokens=NEW)
    assert text == pipe_text.tokenizer.batch_decode(ids, skip_special_tokens=True)
    assert all(isinstance(t, str) for t in text) and any(text)
    # Same as the templated prompt tokenized by hand, truncated at EOS.
    templated = chat_ids("<|audio|>" + PRESETS["3.3"].transcribe)
    manual = SpeechPipeline(pipe_ids.model, eos_token_id=EOS_ID)
    assert manual.generate_ids([FOX, SHORT], prompt_ids=templated, max_new_tokens=NEW) == ids


def test_translate_builds_the_instruction(pipe_text):
    got = pipe_text.translate(FOX, "French", max_new_tokens=NEW)
    want = pipe_text.generate(FOX, "<|audio|>translate the speech to French", max_new_tokens=NEW)
    assert got == want and len(got) == 1


def test_prompt_without_chat_template(pipe_text, pipe_ids):
    got = pipe_text.generate_ids(FOX, "<|audio|>can you", max_new_tokens=NEW, chat_template=False)
    prompt = word_tokenizer()("<|audio|>can you")["input_ids"]
    manual = SpeechPipeline(pipe_ids.model, eos_token_id=EOS_ID)
    assert got == manual.generate_ids(FOX, prompt_ids=prompt, max_new_tokens=NEW)


# (c) batches: each row as if alone


def test_batch_rows_equal_single_clips(pipe_ids):
    prompts = [PROMPT_IDS, [9, AUDIO_ID, 10]]
    batch = pipe_ids.generate_ids([FOX, SHORT], prompt_ids=prompts, max_new_tokens=NEW)
    alone = [
        pipe_ids.generate_ids(clip, prompt_ids=p, max_new_tokens=NEW)[0]
        for clip, p in zip([FOX, SHORT], prompts, strict=True)
    ]
    assert batch == alone
    assert batch[0] != batch[1]


def test_batch_text_rows_equal_single_requests(pipe_text):
    prompts = ["<|audio|>can you transcribe", "<|audio|>translate the speech to French"]
    batch = pipe_text.generate([SHORT, FOX], prompts, max_new_tokens=NEW)
    alone = [
        pipe_text.generate(clip, prompt, max_new_tokens=NEW)[0]
        for clip, prompt in zip([SHORT, FOX], prompts, strict=True)
    ]
    assert batch == alone


# (d) text-only requests


def test_text_only_request(pipe_text):
    pipe_text.transcribe(FOX, max_new_tokens=1)
    assert pipe_text.model.adapter_active
    out = pipe_text.generate(prompt=["can you translate the speech", "French"], max_new_tokens=NEW)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    assert not pipe_text.model.adapter_active


# (e) bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            dict(audio=FOX, prompt="transcribe"),
            r"prompt 0 has 0 audio placeholders \(<\|audio\|>\)",
        ),
        (dict(audio=FOX, prompt="<|audio|><|audio|>"), "has 2"),
        (dict(prompt="<|audio|> hello"), "no audio was given"),
        (dict(audio=[FOX, SHORT], prompt=["<|audio|>"] * 3), "got 3 prompts for 2 audio clips"),
        (dict(audio=FOX, prompt=[]), "empty list of prompts"),
        (dict(audio=FOX, prompt="<|audio|>", prompt_ids=PROMPT_IDS), "not both"),
        (dict(), "nothing to do"),
        (
            dict(audio=FOX, prompt_ids=[1, 2, 3]),
            r"prompt 0 has 0 audio placeholders \(token id 127\)",
        ),
        (
            dict(prompt_ids=PROMPT_IDS),
            r"has 1 audio placeholders \(token id 127\); no audio was given",
        ),
        (dict(audio=FOX, max_new_tokens=0), "at least 1"),
        (dict(audio=torch.zeros(10)), "too short"),
    ],
)
def test_bad_input_raises_value_error(pipe_text, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe_text.generate(**kwargs)


def test_without_tokenizer_errors(pipe_ids):
    with pytest.raises(ValueError, match="a text prompt needs a tokenizer"):
        pipe_ids.generate_ids(FOX)
    with pytest.raises(ValueError, match="a text prompt needs a tokenizer"):
        pipe_ids.generate_ids(FOX, "<|audio|> hi")
    with pytest.raises(ValueError, match="decoding needs a tokenizer"):
        pipe_ids.transcribe(FOX)


def test_tokenizer_audio_id_must_match_model(pipe_ids):
    processor = GraniteSpeechProcessor(tokenizer=word_tokenizer(), audio_token="speech")
    with pytest.raises(ValueError, match="maps speech to 10 but the model's audio_token_index"):
        SpeechPipeline(pipe_ids.model, processor)


# (f) prompts that do not drift with the calendar, keywords, beam search, EOS ids, cut rows


def _frozen_clock(monkeypatch, day: int):
    import datetime as real

    from transformers.utils import chat_template_utils

    class Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return real.datetime(2026, 1, day, 12, 0, tzinfo=tz)

    monkeypatch.setattr(chat_template_utils, "datetime", Frozen)


def test_prompt_is_identical_on_two_dates(pipe_text, monkeypatch):
    user = pipe_text.prompts.user_turn("transcribe")
    rendered = []
    bare = []
    for day in (1, 2):
        _frozen_clock(monkeypatch, day)
        rendered.append(pipe_text.prompt_text(user))
        bare.append(
            SpeechPipeline(
                pipe_text.model, pipe_text.processor, prompts=PromptPreset(None)
            ).prompt_text(user)
        )
    assert rendered[0] == rendered[1]
    assert PRESETS["3.3"].system in rendered[0] and "Today's Date: April 9, 2025." in rendered[0]
    assert bare[0] != bare[1]  # the template's own default turn does drift: the check can fail


def test_keywords_and_translation_prompts():
    preset = PRESETS["3.3"]
    assert preset.user_turn("transcribe", keywords=["FMS", " Granite "]) == (
        "<|audio|>can you transcribe the speech into a written format? Keywords: FMS, Granite"
    )
    assert preset.user_turn("translate", language="French") == (
        "<|audio|>translate the speech to French"
    )
    assert PRESETS["4.x"].user_turn().startswith("<|audio|> can you")
    custom = preset.with_(transcribe="transcribe verbatim", system=None)
    assert custom.messages(custom.user_turn()) == [
        {"role": "user", "content": "<|audio|>transcribe verbatim"}
    ]
    with pytest.raises(ValueError, match="needs a target language"):
        preset.user_turn("translate")
    with pytest.raises(TypeError, match="list of strings"):
        preset.user_turn(keywords="FMS")


def test_transcribe_with_keywords_uses_the_keyword_prompt(pipe_text):
    got = pipe_text.transcribe(FOX, keywords=["French"], max_new_tokens=NEW)
    prompt = "<|audio|>can you transcribe the speech into a written format? Keywords: French"
    assert got == pipe_text.generate(FOX, prompt, max_new_tokens=NEW)


def test_beam_search_through_the_pipeline_matches_hf(pipe_ids, hf):
    got = pipe_ids.generate_ids(FOX, prompt_ids=PROMPT_IDS, max_new_tokens=NEW, num_beams=4)
    assert got == [hf_generate(hf, PROMPT_IDS, FOX, num_beams=4)]


def test_all_eos_ids_of_the_generation_config(dirs, tmp_path, pipe_ids):
    full = pipe_ids.generate_ids(FOX, prompt_ids=PROMPT_IDS, max_new_tokens=NEW)[0]
    later = next(t for t in full if t != full[0])
    stops = [next(t for t in range(AUDIO_ID) if t not in full), later]  # one never seen
    path = tmp_path / "ckpt"
    shutil.copytree(dirs[0], path)
    set_generation_eos(path, stops)
    pipe = SpeechPipeline.from_pretrained(path)
    assert pipe.eos_token_id == tuple(stops)
    out = pipe.run(FOX, prompt_ids=PROMPT_IDS, max_new_tokens=NEW)[0]
    assert out.tokens == full[: full.index(later)] and out.finished


def test_a_cut_row_is_flagged_and_logged(pipe_text, caplog):
    with caplog.at_level("WARNING", logger="granite_fms.pipeline"):
        out = pipe_text.run([FOX, SHORT], max_new_tokens=2)
    cut = [i for i, g in enumerate(out) if not g.finished]
    assert cut and all(len(out[i].tokens) == 2 for i in cut)
    assert f"requests {cut} reached max_new_tokens" in caplog.text
