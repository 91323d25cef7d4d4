"""The built-in `tiny` variant for trying the tools: random weights and a word-level tokenizer
(and `tiny-ctc`, the same for Granite Speech 5.0, with a character-level CTC tokenizer).

    pipe = random_pipeline("tiny")          # what `granite-fms ... --variant tiny` runs
    pipe.transcribe("clip.wav")              # meaningless text, real speed
    pipe = random_ctc_pipeline("tiny-ctc")  # `--variant tiny-ctc`

The tokenizer is a stand-in for Granite's: the words of the prompt presets, then fillers, the
audio placeholder at the model's `audio_token_index`, EOS `<|end_of_text|>` = 0 and a
Granite-like chat template.
"""

import torch
from fms.models import get_model

from granite_fms.audio.features5 import GraniteSpeech5FeatureExtractor
from granite_fms.audio.processor import GraniteSpeechProcessor
from granite_fms.pipeline import SpeechPipeline
from granite_fms.pipeline5 import CTCPipeline, CTCProcessor

# Word-level stand-in for Granite's tokenizer: special tokens first (EOS = 0), the words of the
# prompt presets, then fillers `w<i>` up to the audio placeholder.
_SPECIAL = ["<|end_of_text|>", "<unk>", "<|start_of_role|>", "<|end_of_role|>"]
_WORDS = "user assistant can you transcribe the speech into a written format ? translate to French"
# Like Granite's: without a system turn it inserts a default one holding today's date.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|start_of_role|>system<|end_of_role|>"
    "Today's Date: {{ strftime_now('%B %d, %Y') }}.<|end_of_text|>\n{% endif %}"
    "{% for m in messages %}<|start_of_role|>{{ m['role'] }}<|end_of_role|>{{ m['content'] }}"
    "<|end_of_text|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|start_of_role|>assistant<|end_of_role|>{% endif %}"
)


def word_tokenizer(vocab_size: int = 128, audio_token_index: int = 127):
    """A `PreTrainedTokenizerFast` with `vocab_size` words, `<|audio|>` at `audio_token_index`,
    EOS `<|end_of_text|>` = 0 and a Granite-like chat template (defaults: the tiny test
    checkpoints; `(49160, 49159)`: the 3.3 vocabulary, e.g. the built-in `tiny` variant)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = _SPECIAL + _WORDS.split()
    if not len(vocab) <= audio_token_index < vocab_size:
        raise ValueError(
            f"audio_token_index must be in [{len(vocab)}, vocab_size={vocab_size}), "
            f"got {audio_token_index}"
        )
    vocab += [f"w{i}" for i in range(audio_token_index - len(vocab))] + ["<|audio|>"]
    vocab += [f"w{i}" for i in range(audio_token_index, vocab_size - 1)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        additional_special_tokens=["<|start_of_role|>", "<|end_of_role|>", "<|audio|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def random_pipeline(
    variant: str = "tiny", *, dtype: torch.dtype | None = None, device: str = "cpu", seed: int = 0
):
    """A `SpeechPipeline` of a registered `granite_speech` variant with random weights (FMS's
    `get_model` without a checkpoint, seeded) and a `word_tokenizer` of its vocabulary: the
    built-in default of `granite-fms --variant tiny`, for speed, not for text."""
    torch.manual_seed(seed)
    model = get_model("granite_speech", variant, device_type="cpu", data_type=dtype)
    model = model.to(device).eval()
    cfg = model.config
    tokenizer = word_tokenizer(cfg.text_config.src_vocab_size, cfg.audio_token_index)
    return SpeechPipeline(model, GraniteSpeechProcessor(tokenizer=tokenizer))


def ctc_tokenizer(vocab_size: int = 64):
    """A character-level CTC tokenizer (transformers' `ParakeetTokenizer`, as the 5.0 release
    uses): `<pad>` = 0 is the blank, then `<unk>`, the letters with and without the word
    marker `▁`, and fillers; ids decode with the Metaspace decoder ("▁a", "b" -> "ab")."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers.models.parakeet.tokenization_parakeet import ParakeetTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = ["<pad>", "<unk>", *(f"▁{c}" for c in letters), *letters]
    if vocab_size < len(vocab):
        raise ValueError(f"vocab_size must be at least {len(vocab)}, got {vocab_size}")
    vocab += [f"▁w{i}" for i in range(vocab_size - len(vocab))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    return ParakeetTokenizer(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")


def random_ctc_pipeline(
    variant: str = "tiny-ctc",
    *,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    seed: int = 0,
):
    """A `CTCPipeline` of a registered `granite_speech5` variant with random weights (FMS's
    `get_model` without a checkpoint, seeded) and a `ctc_tokenizer` of its vocabulary: the
    built-in default of `granite-fms --variant tiny-ctc`, for speed, not for text."""
    torch.manual_seed(seed)
    model = get_model("granite_speech5", variant, device_type="cpu", data_type=dtype)
    model = model.to(device).eval()
    tokenizer = ctc_tokenizer(model.config.src_vocab_size)
    return CTCPipeline(model, CTCProcessor(GraniteSpeech5FeatureExtractor(), tokenizer))


__all__ = [
    "CHAT_TEMPLATE",
    "ctc_tokenizer",
    "random_ctc_pipeline",
    "random_pipeline",
    "word_tokenizer",
]
