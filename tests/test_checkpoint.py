"""Loading real-layout checkpoints: FMS registries, sharded indexes, adapters, clear errors."""

import json
import shutil

import pytest
import torch
from fms.models import get_model
from safetensors.torch import load_file, save_file

import granite_fms
from granite_fms.testing import load_hf_model, save_hf_checkpoint, tiny_hf_config
from helpers import audio_prompt, n_tokens, rel_err


def _logits_pair(hf, fm, frames=33):
    torch.manual_seed(11)
    x = torch.randn(1, frames, 160)
    ids = audio_prompt(fm.config.audio_token_index, n_tokens(fm, frames))
    if hasattr(hf, "peft_config"):
        hf.enable_adapters()
    fm.start_request(True)
    with torch.no_grad():
        ref = hf(input_ids=ids, input_features=x).logits
        out = fm(ids, input_features=x)
    return ref / fm.config.text_config.logits_scaling, out


# A configuration no other test uses: other widths, depths, heads, window and downsampling.
UNSEEN = [
    (
        "3.3",
        dict(
            encoder_config=dict(hidden_dim=48, num_layers=3, num_heads=3, dim_head=8,
                                output_dim=7, context_size=12, max_pos_emb=20,
                                conv_kernel_size=4),
            projector_config=dict(hidden_size=24, encoder_hidden_size=48, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=40),
            text_config=dict(hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                             num_attention_heads=6, num_key_value_heads=3, vocab_size=90),
            audio_token_index=89,
            window_size=10,
            downsample_rate=2,
        ),
    ),
    (
        "4.x",
        dict(
            text_config=dict(hidden_size=40, num_attention_heads=5, num_key_value_heads=1,
                             vocab_size=150, rope_theta=5e5),
            audio_token_index=149,
        ),
    ),
]  # fmt: skip


@pytest.mark.parametrize("style,overrides", UNSEEN, ids=["3.3-unseen", "4.x-unseen"])
def test_get_model_hf_pretrained_on_unseen_configs(tmp_path, style, overrides):
    lora = 6 if style == "3.3" else None
    hf = save_hf_checkpoint(tmp_path, tiny_hf_config(style, **overrides), lora_rank=lora, seed=7)
    fm = get_model("hf_pretrained", model_path=str(tmp_path)).eval()
    assert isinstance(fm, granite_fms.GraniteSpeech)
    assert fm.config.lora_rank == (lora or 0)
    ref, out = _logits_pair(hf, fm)
    assert rel_err(ref, out) < 1e-5
    # The project's own loader gives the same model.
    fm2 = granite_fms.load_model(tmp_path)
    assert rel_err(out, _logits_pair(hf, fm2)[1]) < 1e-6


def test_lora_scale_comes_from_the_adapter_file(ckpt_33):
    cfg = json.loads((ckpt_33 / "adapter_config.json").read_text())
    fm = granite_fms.load_model(ckpt_33)
    assert fm.config.lora_scale == cfg["lora_alpha"] / cfg["r"]
    assert granite_fms.load_model(ckpt_33, with_adapter=False).config.lora_rank == 0


def test_missing_adapter_warned_for_a_directory_only(tmp_path, ckpt_33, caplog):
    """A checkpoint directory whose config has has_lora_adapter but lacks the adapter files is
    warned about, naming the directory; a config mapped in memory (no directory: the caller
    adds its LoRA) is not."""
    from granite_fms.hf.config import fms_config_from_hf, read_hf_config

    stripped = tmp_path / "no_adapter"
    shutil.copytree(ckpt_33, stripped)
    (stripped / "adapter_config.json").unlink()
    (stripped / "adapter_model.safetensors").unlink()
    with caplog.at_level("WARNING", logger="granite_fms.hf.config"):
        assert granite_fms.load_model(stripped).config.lora_rank == 0
    assert "has_lora_adapter" in caplog.text and str(stripped) in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="granite_fms.hf.config"):
        assert fms_config_from_hf(read_hf_config(ckpt_33)).lora_rank == 0
    assert "has_lora_adapter" not in caplog.text


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A sharded checkpoint plus orphaned shards of another configuration, as in the public
    granite-speech-3.3-2b repository (old *-of-00003 files not listed in the index)."""
    path = tmp_path_factory.mktemp("sharded")
    save_hf_checkpoint(path, tiny_hf_config("3.3"), lora_rank=4, seed=5, max_shard_size="60KB")
    assert (path / "model.safetensors.index.json").exists()
    old = tmp_path_factory.mktemp("old")
    save_hf_checkpoint(
        old, tiny_hf_config("3.3", encoder_config=dict(output_dim=5)), lora_rank=None, seed=6
    )
    shutil.copy(old / "model.safetensors", path / "model-00001-of-00003.safetensors")
    return path


def test_loader_follows_the_index_past_orphaned_shards(sharded):
    hf = load_hf_model(sharded)
    fm = granite_fms.load_model(sharded)
    ref, out = _logits_pair(hf, fm)
    assert rel_err(ref, out) < 1e-5


def test_get_model_refuses_orphaned_shards_with_a_clear_error(sharded):
    with pytest.raises(ValueError, match="does not list.*granite_fms.load_model"):
        get_model("hf_pretrained", model_path=str(sharded))


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_shard_is_named(sharded, tmp_path):
    path = _copy(sharded, tmp_path / "ck")
    shard = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    victim = sorted(set(shard.values()))[-1]
    (path / victim).unlink()
    with pytest.raises(ValueError, match=f"shards that do not exist.*{victim}"):
        granite_fms.load_model(path)


def test_missing_weights_and_config_are_named(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        granite_fms.load_model(tmp_path)
    tiny_hf_config().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no model.safetensors.index.json or model.safetensors"):
        granite_fms.load_model(tmp_path)


def _edit_weights(path, edit):
    sd = load_file(path / "model.safetensors")
    edit(sd)
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_is_named(ckpt_33, tmp_path):
    path = _copy(ckpt_33, tmp_path / "ck")
    _edit_weights(path, lambda sd: sd.pop("encoder.layers.1.attn.to_q.weight"))
    with pytest.raises(ValueError, match=r"lacks tensors.*encoder\.layers\.1\.attn\.query\.weight"):
        granite_fms.load_model(path)
    with pytest.raises(ValueError, match=r"did not provide.*encoder\.layers\.1\.attn\.query"):
        get_model("hf_pretrained", model_path=str(path))


def test_unknown_tensor_is_named(ckpt_33, tmp_path):
    path = _copy(ckpt_33, tmp_path / "ck")
    _edit_weights(path, lambda sd: sd.update({"encoder.extra_head.weight": torch.zeros(2, 2)}))
    with pytest.raises(ValueError, match=r"no place in the model.*encoder\.extra_head\.weight"):
        granite_fms.load_model(path)


def test_shape_mismatch_names_tensor_and_file(ckpt_33, tmp_path):
    path = _copy(ckpt_33, tmp_path / "ck")
    _edit_weights(path, lambda sd: sd.update({"encoder.out.weight": torch.zeros(5, 32)}))
    with pytest.raises(
        ValueError,
        match=r"shape mismatch for encoder\.out\.weight.*"
        r"model\.safetensors:encoder\.out\.weight",
    ):
        granite_fms.load_model(path)


def test_inconsistent_adapter_files_are_named(ckpt_33, tmp_path):
    path = _copy(ckpt_33, tmp_path / "ck")
    (path / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match="adapter weights .* are missing"):
        granite_fms.load_model(path)
    path = _copy(ckpt_33, tmp_path / "ck2")
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg.update(use_dora=True, target_modules=["q_proj", "k_proj"])
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported LoRA adapter.*k_proj.*use_dora"):
        granite_fms.load_model(path)


def test_adapter_rank_mismatch_with_weights_is_named(ckpt_33, tmp_path):
    path = _copy(ckpt_33, tmp_path / "ck")
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["r"] = 8
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape mismatch for .*lora"):
        granite_fms.load_model(path)


def test_not_a_granite_speech_checkpoint(tmp_path):
    from transformers import GraniteConfig

    GraniteConfig(architectures=["GraniteForCausalLM"]).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not Granite Speech"):
        granite_fms.load_model(tmp_path)


def test_variant_without_checkpoint_is_randomly_initialised():
    """get_model without weights: every tensor initialised (FMS calls reset_parameters)."""
    model = get_model("granite_speech", "tiny")
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.isfinite(tensor).all(), name
        if tensor.dim() >= 2 and ".lora_b_" not in name:  # LoRA B starts at zero, as in peft
            assert tensor.abs().sum() > 0, name
    running_vars = [m.running_var for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert running_vars and all((v > 0).all() for v in running_vars)
    feats = torch.randn(1, 45, 160)
    n = int(model.audio_token_counts(torch.ones(1, 45, dtype=torch.bool)))
    ids = torch.tensor([[1] + [model.config.audio_token_index] * n + [2]])
    with torch.no_grad():
        assert torch.isfinite(model(ids, input_features=feats)).all()
