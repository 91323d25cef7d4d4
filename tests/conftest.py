"""Shared fixtures: tiny checkpoints written by Hugging Face's own classes, loaded both ways."""

import shutil
from pathlib import Path

import pytest
import torch

import granite_fms
from granite_fms.app.demo import ctc_tokenizer, word_tokenizer
from granite_fms.testing import (
    load_hf_model,
    save_hf5_checkpoint,
    save_hf_checkpoint,
    tiny_hf_config,
)
from helpers import EOS_ID, set_generation_eos


def pytest_addoption(parser):
    parser.addoption(
        "--capture_expectation",
        action="store_true",
        default=False,
        help="rewrite FMS test-suite expectation files",
    )


@pytest.fixture(scope="session")
def capture_expectation(request):
    return request.config.getoption("capture_expectation")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """For tiny tensors intra-op threads only add overhead (tenfold on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ckpt_33(tmp_path_factory):
    """3.3 layout: tied embeddings and a peft LoRA adapter (r=4, alpha=8: scale 2)."""
    path = tmp_path_factory.mktemp("ckpt_33")
    save_hf_checkpoint(path, tiny_hf_config("3.3"), lora_rank=4, lora_alpha=8.0, seed=1)
    return path


@pytest.fixture(scope="session")
def ckpt_4x(tmp_path_factory):
    """4.x layout: untied embeddings, no adapter, another audio token id."""
    path = tmp_path_factory.mktemp("ckpt_4x")
    save_hf_checkpoint(path, tiny_hf_config("4.x"), lora_rank=None, seed=2)
    return path


@pytest.fixture(scope="session")
def ckpt_ctx200(tmp_path_factory):
    """Tiny widths with the real encoder context (200 frames) and max_pos_emb (512)."""
    path = tmp_path_factory.mktemp("ckpt_ctx200")
    config = tiny_hf_config("3.3", encoder_config=dict(context_size=200, max_pos_emb=512))
    save_hf_checkpoint(path, config, lora_rank=4, seed=3)
    return path


@pytest.fixture(scope="session")
def ckpt_33_untied(tmp_path_factory):
    """3.3 layout with an untied head: random tied weights make greedy repeat one token, so
    tests that need varied greedy outputs (EOS picked from them) use this one."""
    path = tmp_path_factory.mktemp("ckpt_33_untied")
    config = tiny_hf_config(
        "3.3", text_config=dict(tie_word_embeddings=False), tie_word_embeddings=False
    )
    save_hf_checkpoint(path, config, lora_rank=4, seed=0)
    return path


@pytest.fixture(scope="session")
def dirs(ckpt_33_untied, tmp_path_factory) -> tuple[Path, Path]:
    """`ckpt_33_untied` twice: (without tokenizer files, with `word_tokenizer()`'s).

    No EOS in the bare one's generation config (rows run max_new_tokens, as an HF reference
    without EOS does); the full one's names the tokenizer's EOS, as released checkpoints do.
    """
    root = tmp_path_factory.mktemp("pipeline")
    bare, full = root / "bare", root / "full"
    shutil.copytree(ckpt_33_untied, bare)
    set_generation_eos(bare, None)
    shutil.copytree(bare, full)
    word_tokenizer().save_pretrained(full)
    set_generation_eos(full, EOS_ID)
    return bare, full


def _pair(layout: str):
    """Fixture `pair_<layout>`: checkpoint `ckpt_<layout>` loaded by HF and by FMS."""

    @pytest.fixture(scope="session", name=f"pair_{layout}")
    def pair(request):
        path = request.getfixturevalue(f"ckpt_{layout}")
        return load_hf_model(path), granite_fms.load_model(path)

    return pair


pair_33, pair_33_untied, pair_4x, pair_ctx200 = map(_pair, ("33", "33_untied", "4x", "ctx200"))


@pytest.fixture(scope="session")
def ckpt5(tmp_path_factory):
    """Granite Speech 5.0 (CTC) written by `GraniteSpeech5ForCTC.save_pretrained`, with a
    character-level `ParakeetTokenizer`; the blank's logit raised so greedy paths hold blanks
    and repeats, as a trained model's do."""
    path = tmp_path_factory.mktemp("ckpt5")
    save_hf5_checkpoint(path, seed=5, blank_logit=3.0, tokenizer=ctc_tokenizer())
    return path


@pytest.fixture(scope="session")
def pair5(ckpt5):
    from transformers import GraniteSpeech5ForCTC

    hf = GraniteSpeech5ForCTC.from_pretrained(ckpt5, dtype=torch.float32).eval()
    return hf, granite_fms.load_model(ckpt5)
