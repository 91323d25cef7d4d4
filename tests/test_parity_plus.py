"""Granite Speech Plus: fp32 parity with `GraniteSpeechPlusForConditionalGeneration` on
checkpoints it wrote, in a LoRA (3.3-style) and a no-LoRA (4.x-style) layout.

The encoder concatenates selected hidden states (`cat_hidden_layers`; 0 is the input
projection's output) to its final output before the projector. Both layouts include the
middle block, after which the CTC feedback is added: the reference concatenates that block's
output with the feedback included. Tolerances as in test_parity.py.
"""

import pytest
import torch
import transformers
from fms.models import get_model

import granite_fms
from granite_fms.pipeline import SpeechPipeline
from granite_fms.testing import load_hf_model, save_hf_checkpoint, tiny_hf_config
from helpers import audio_prompt, fms_generate, n_tokens, rel_err

TOL = 1e-5
LAYOUTS = {
    # 2 encoder blocks: 0 = input projection, 1 = the middle block.
    "plus_33": dict(style="3.3", cat_hidden_layers=[0, 1], lora_rank=4, seed=21),
    # 4 encoder blocks, the middle one (2) and another (3), no adapter, untied head.
    "plus_4x": dict(
        style="4.x",
        cat_hidden_layers=[2, 3],
        lora_rank=None,
        seed=22,
        encoder_config=dict(num_layers=4),
    ),
}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def plus(request, tmp_path_factory):
    """(checkpoint directory, HF model, FMS model) for one layout."""
    layout = dict(LAYOUTS[request.param])
    path = tmp_path_factory.mktemp(request.param)
    lora_rank, seed = layout.pop("lora_rank"), layout.pop("seed")
    config = tiny_hf_config(**layout)
    assert config.model_type == "granite_speech_plus"
    save_hf_checkpoint(path, config, lora_rank=lora_rank, seed=seed)
    return path, load_hf_model(path), granite_fms.load_model(path)


def test_config_mapping(plus):
    path, hf, fm = plus
    enc = fm.config.encoder_config
    assert list(enc.cat_hidden_layers) == hf.config.encoder_config.cat_hidden_layers
    assert fm.config.projector_config.encoder_dim == enc.emb_dim * (len(enc.cat_hidden_layers) + 1)
    assert fm.config.lora_rank == (4 if hasattr(hf, "peft_config") else 0)


@pytest.mark.parametrize("frames", [13, 45, 61])
def test_concatenated_encoder_and_projector_match_hf(plus, frames):
    _, hf, fm = plus
    x = torch.randn(1, frames, 160)
    with torch.no_grad():
        ref_enc = hf.model.encoder(x).last_hidden_state
        enc = fm.encoder(x, torch.ones(1, frames, dtype=torch.bool))
        assert enc.shape == ref_enc.shape == (1, frames, fm.config.encoder_config.out_emb_dim)
        assert rel_err(ref_enc, enc) < TOL
        ref = hf.model.projector(ref_enc)
        out = fm.projector(enc)
    assert rel_err(ref, out) < TOL


def test_padded_batch_gives_each_clip_its_own_output(plus):
    """The length mask covers the concatenated states too (0 = input projection included)."""
    _, hf, fm = plus
    lengths = [61, 17]
    clips = [torch.randn(1, n, 160) for n in lengths]
    feats = torch.zeros(2, 61, 160)
    mask = torch.zeros(2, 61, dtype=torch.bool)
    for i, (clip, n) in enumerate(zip(clips, lengths, strict=True)):
        feats[i, :n], mask[i, :n] = clip[0], True
    with torch.no_grad():
        batched = fm.audio_embeddings(feats, mask)
        for i, clip in enumerate(clips):
            ref = hf.model.get_audio_features(clip).pooler_output
            assert rel_err(ref, batched[i, : ref.shape[1]]) < TOL


def test_logits_match_hf(plus):
    """Adapter on and off where there is one."""
    _, hf, fm = plus
    x = torch.randn(1, 47, 160)
    ids = audio_prompt(fm.config.audio_token_index, n_tokens(fm, 47))
    lora = hasattr(hf, "peft_config")
    for adapter in (True, False) if lora else (True,):
        if lora:
            hf.enable_adapters() if adapter else hf.disable_adapters()
        fm.set_adapter("on" if adapter else "off")
        with torch.no_grad():
            ref = hf(input_ids=ids, input_features=x).logits
            out = fm(ids, input_features=x)
        assert rel_err(ref / fm.config.text_config.logits_scaling, out) < TOL
    fm.set_adapter("auto")


@pytest.mark.parametrize("frames", [45, 61])
def test_greedy_generation_matches_hf(plus, frames):
    _, hf, fm = plus
    x = torch.randn(1, frames, 160)
    ids = audio_prompt(fm.config.audio_token_index, n_tokens(fm, frames))
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        ref = hf.generate(
            input_ids=ids, input_features=x, max_new_tokens=20, do_sample=False, pad_token_id=0
        )[:, -20:]
    assert fms_generate(fm, ids, x).tolist() == ref.tolist()


def test_get_model_hf_pretrained_builds_the_same_model(plus):
    path, _, fm = plus
    via_fms = get_model("hf_pretrained", model_path=str(path)).eval()
    assert isinstance(via_fms, granite_fms.GraniteSpeech)
    x = torch.randn(1, 30, 160)
    ids = audio_prompt(fm.config.audio_token_index, n_tokens(fm, 30))
    fm.start_request(True)
    via_fms.start_request(True)
    with torch.no_grad():
        assert rel_err(fm(ids, input_features=x), via_fms(ids, input_features=x)) < 1e-6


def test_pipeline_prompt_ids_match_hf(plus):
    """A prompt with one placeholder, expanded for the clip, through SpeechPipeline."""
    path, hf, _ = plus
    pipe = SpeechPipeline.from_pretrained(path)
    audio_id = pipe.audio_token_id
    wave = torch.randn(16000) * 0.1
    prompt = [1, 5, audio_id, 7, 8]
    got = pipe.generate_ids(wave, prompt_ids=prompt, max_new_tokens=10)
    extracted = transformers.GraniteSpeechFeatureExtractor()(wave)
    n = extracted["audio_embed_sizes"][0]
    ids = torch.tensor([[1, 5] + [audio_id] * n + [7, 8]])
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        ref = hf.generate(
            input_ids=ids,
            input_features=extracted["input_features"],
            max_new_tokens=10,
            do_sample=False,
            pad_token_id=0,
        )
    assert got == [ref[0, ids.shape[1] :].tolist()]
