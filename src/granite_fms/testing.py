"""Tiny Granite Speech checkpoints written by Hugging Face's own classes, for parity checks.

No weights can be downloaded: tests and experiments build random checkpoints with
`transformers.GraniteSpeechForConditionalGeneration.save_pretrained` (or
`GraniteSpeechPlusForConditionalGeneration`, given `cat_hidden_layers`) and a peft LoRA
adapter, in the layouts of the real 3.3 (tied embeddings, LoRA) and 4.x (untied, no LoRA)
releases. The word-level tokenizer and the random-weight pipeline of the built-in `tiny`
variant (`word_tokenizer`, `random_pipeline`) live in `granite_fms.app.demo`, as do those of
`tiny-ctc` (`ctc_tokenizer`, `random_ctc_pipeline`).
"""

import math
from pathlib import Path
from typing import Any

import torch

from granite_fms.hf.config import ENCODER_NAMES, PROJECTOR_NAMES
from granite_fms.hf.granite_speech5 import ENCODER_NAMES as ENCODER5_NAMES

# Shapes that exercise every code path in seconds: two encoder blocks (so the mid-layer CTC
# feedback sits between them), a context of 20 frames, windows of 15, GQA in the LLM.
# fmt: off
TINY_ENCODER = dict(input_dim=160, num_layers=2, hidden_dim=32, num_heads=2, dim_head=16,
                    output_dim=12, context_size=20, max_pos_emb=32, conv_kernel_size=5)
TINY_PROJECTOR = dict(model_type="blip_2_qformer", hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=64, encoder_hidden_size=32,
                      cross_attention_frequency=1)
TINY_TEXT = dict(model_type="granite", vocab_size=128, hidden_size=64, intermediate_size=96,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=512, rms_norm_eps=1e-5)
# fmt: on


# Per release style: text-config overrides and top-level settings. 3.3 uses multipliers of 1
# (real: 12 / 0.22): with tied embeddings and random weights the real values make greedy
# decoding repeat the last token, which would test nothing.
# fmt: off
_STYLES = {
    "3.3": (dict(embedding_multiplier=1.0, residual_multiplier=1.0, attention_multiplier=1 / 16,
                 logits_scaling=8.0, rope_theta=1e7, tie_word_embeddings=True),
            dict(audio_token_index=127, has_lora_adapter=True, tie_word_embeddings=True)),
    "4.x": (dict(embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=1 / 16,
                 logits_scaling=8.0, rope_theta=1e4, tie_word_embeddings=False),
            dict(audio_token_index=100, has_lora_adapter=False, tie_word_embeddings=False)),
}
# fmt: on


def tiny_hf_config(
    style: str = "3.3", cat_hidden_layers: list[int] | None = None, **overrides: Any
):
    """A small `transformers.GraniteSpeechConfig` in the style of the 3.3 or 4.x releases.

    With `cat_hidden_layers`, a `GraniteSpeechPlusConfig` whose encoder concatenates those
    hidden states (0: the input projection) to its output, the projector widened to match.
    """
    from transformers import GraniteSpeechConfig, GraniteSpeechPlusConfig

    if style not in _STYLES:
        raise ValueError(f"style must be '3.3' or '4.x', got {style!r}")
    text_overrides, top = _STYLES[style]
    text = dict(TINY_TEXT, **text_overrides)
    kwargs: dict[str, Any] = dict(
        text_config=text,
        encoder_config=dict(TINY_ENCODER),
        projector_config=dict(TINY_PROJECTOR),
        window_size=15,
        downsample_rate=5,
        **top,
    )
    for key, value in overrides.items():
        if key in ("text_config", "encoder_config", "projector_config"):
            kwargs[key].update(value)
        else:
            kwargs[key] = value
    if cat_hidden_layers is None:
        return GraniteSpeechConfig(**kwargs)
    encoder = kwargs["encoder_config"]
    encoder["cat_hidden_layers"] = list(cat_hidden_layers)
    kwargs["projector_config"]["encoder_hidden_size"] = encoder["hidden_dim"] * (
        len(cat_hidden_layers) + 1
    )
    return GraniteSpeechPlusConfig(**kwargs)


def _hf_class(model_type: str):
    import transformers

    if model_type == "granite_speech_plus":
        return transformers.GraniteSpeechPlusForConditionalGeneration
    return transformers.GraniteSpeechForConditionalGeneration


# transformers name -> FMS name of the text config (the rest: `granite_fms.hf.config`'s).
# fmt: off
_TEXT_NAMES = dict(vocab_size="src_vocab_size", hidden_size="emb_dim", num_hidden_layers="nlayers",
                   num_attention_heads="nheads", num_key_value_heads="kvheads",
                   max_position_embeddings="max_expected_seq_len", rms_norm_eps="norm_eps",
                   rope_theta="rope_theta", embedding_multiplier="embedding_multiplier",
                   residual_multiplier="residual_multiplier", logits_scaling="logits_scaling",
                   attention_multiplier="attention_multiplier", tie_word_embeddings="tie_heads")
# fmt: on


def _renamed(config, names: dict[str, str]) -> dict:
    """The inverse of `granite_fms.hf.config.renamed`: FMS settings under their HF names."""
    return {hf: getattr(config, fms) for hf, fms in names.items()}


def hf_config_from_fms(config):
    """The transformers `GraniteSpeechConfig` with the shapes of an FMS `GraniteSpeechConfig`.

    The inverse of `granite_fms.hf.config.fms_config_from_hf`. The LoRA rank and alpha are not
    part of it: they live in the peft adapter (`save_hf_checkpoint(lora_rank=, lora_alpha=)`).
    """
    from transformers import GraniteSpeechConfig

    enc, proj, text = config.encoder_config, config.projector_config, config.text_config
    if text.head_dim * text.nheads != text.emb_dim:
        raise ValueError(
            f"text_config: head_dim {text.head_dim} x nheads {text.nheads} != emb_dim "
            f"{text.emb_dim}; transformers' Granite derives head_dim from the width"
        )
    if proj.llm_dim != text.emb_dim:
        raise ValueError(f"projector llm_dim {proj.llm_dim} != text emb_dim {text.emb_dim}")
    encoder = _renamed(enc, ENCODER_NAMES) | {"feedforward_mult": int(enc.hidden_grow_factor)}
    projector = _renamed(proj, PROJECTOR_NAMES) | {
        "model_type": "blip_2_qformer",
        "intermediate_size": round(proj.hidden_grow_factor * proj.emb_dim),
    }
    llm = _renamed(text, _TEXT_NAMES) | {
        "model_type": "granite",
        "intermediate_size": round(text.hidden_grow_factor * text.emb_dim),
        "pad_token_id": text.pad_id if text.pad_id >= 0 else None,
    }
    return GraniteSpeechConfig(
        encoder_config=encoder,
        projector_config=projector,
        text_config=llm,
        window_size=proj.window_size,
        downsample_rate=proj.downsample_rate,
        audio_token_index=config.audio_token_index,
        has_lora_adapter=config.lora_rank > 0,
        tie_word_embeddings=text.tie_heads,
    )


def variant_config(variant: str = "tiny"):
    """The FMS config of a registered `granite_speech` variant (`tiny`: the built-in default)."""
    from fms.models import get_model

    import granite_fms  # noqa: F401  (registers the architecture)

    return get_model("granite_speech", variant, device_type="meta").config


def variant_hf_config(variant: str = "tiny"):
    """The transformers config with the shapes of a registered variant (`hf_config_from_fms`)."""
    return hf_config_from_fms(variant_config(variant))


def save_variant_checkpoint(path: str | Path, variant: str = "tiny", seed: int = 0):
    """A random HF checkpoint of a registered variant, with its peft adapter (rank, alpha)."""
    config = variant_config(variant)
    return save_hf_checkpoint(
        path,
        hf_config_from_fms(config),
        lora_rank=config.lora_rank or None,
        lora_alpha=config.lora_alpha,
        seed=seed,
    )


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Replace every parameter and float buffer by random values (HF inits many to 0 or 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif "norm" in name.lower() and name.endswith("weight"):
                t.copy_(1.0 + 0.1 * torch.randn(t.shape, generator=gen))
            else:
                std = 1.0 / math.sqrt(t.shape[-1]) if t.dim() > 1 else 0.1
                t.copy_(std * torch.randn(t.shape, generator=gen))


def save_hf_checkpoint(
    path: str | Path,
    config=None,
    *,
    lora_rank: int | None = 4,
    lora_alpha: float = 8.0,
    seed: int = 0,
    max_shard_size: str | None = None,
):
    """Write a random HF Granite Speech checkpoint (+ peft adapter unless lora_rank is None).

    Returns the HF model (eval mode, adapter attached if any) that wrote it.
    """
    config = config if config is not None else tiny_hf_config()
    torch.manual_seed(seed)
    model = _hf_class(config.model_type)(config).eval()
    _randomize(model, seed)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    if lora_rank:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=lora_rank,
            lora_alpha=lora_alpha,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,  # random B, so the adapter changes the outputs
        )
        peft_model = get_peft_model(model, lora)
        peft_model.save_pretrained(path)
    return load_hf_model(path)


def load_hf_model(path: str | Path, dtype: torch.dtype = torch.float32):
    """The reference: HF's own class loading the directory (it attaches the adapter itself)."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
    return _hf_class(model_type).from_pretrained(path, dtype=dtype).eval()


# ----- Granite Speech 5.0 (CTC) ---------------------------------------------------------------

# Shapes that exercise every code path in seconds: two subsampling blocks then two plain ones
# (the feedback sits between them), a context of 8 frames, so that clips span several blocks at
# every frame rate.
# fmt: off
TINY_ENCODER5 = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                     num_attention_heads=2, context_size=8, max_position_embeddings=16,
                     conv_kernel_size=5, subsample_layers=[0, 1])
# fmt: on
CTC_VOCAB = 64  # blank, <unk>, the letters with and without `▁` (app.demo.ctc_tokenizer), more


def tiny_hf5_config(vocab_size: int = CTC_VOCAB, **encoder_overrides: Any):
    """A small `transformers.GraniteSpeech5CTCConfig` (blank = pad = 0, tied CTC head)."""
    from transformers import GraniteSpeech5CTCConfig

    encoder = dict(TINY_ENCODER5, vocab_size=vocab_size, **encoder_overrides)
    return GraniteSpeech5CTCConfig(vocab_size=vocab_size, encoder_config=encoder)


def hf5_config_from_fms(config):
    """The transformers `GraniteSpeech5CTCConfig` with the shapes of an FMS
    `GraniteSpeech5Config` (the inverse of `granite_fms.hf.granite_speech5.fms_config_from_hf`)."""
    from transformers import GraniteSpeech5CTCConfig

    encoder = _renamed(config, ENCODER5_NAMES) | dict(
        vocab_size=config.src_vocab_size,
        intermediate_size=round(config.hidden_grow_factor * config.emb_dim),
        subsample_layers=list(config.subsample_layers),
    )
    return GraniteSpeech5CTCConfig(
        vocab_size=config.src_vocab_size,
        pad_token_id=config.blank_id,
        tie_word_embeddings=config.tie_heads,
        encoder_config=encoder,
    )


def save_hf5_checkpoint(
    path: str | Path, config=None, *, seed: int = 0, blank_logit: float = 0.0, tokenizer=None
):
    """Write a random `GraniteSpeech5ForCTC` checkpoint (+ `tokenizer` if given) and return
    the HF model that wrote it (eval mode). `blank_logit` is added to the blank's bias of the
    tied CTC head, so that greedy paths hold blanks as trained models' do."""
    from transformers import GraniteSpeech5ForCTC

    config = config if config is not None else tiny_hf5_config()
    torch.manual_seed(seed)
    model = GraniteSpeech5ForCTC(config).eval()
    _randomize(model, seed)
    with torch.no_grad():
        model.encoder.out.bias[config.pad_token_id] += blank_logit
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return GraniteSpeech5ForCTC.from_pretrained(path, dtype=torch.float32).eval()


__all__ = [
    "hf_config_from_fms",
    "load_hf_model",
    "save_hf5_checkpoint",
    "save_hf_checkpoint",
    "save_variant_checkpoint",
    "tiny_hf5_config",
    "tiny_hf_config",
    "variant_config",
    "variant_hf_config",
]
