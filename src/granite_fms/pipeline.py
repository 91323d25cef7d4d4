"""Audio and prompts in, greedy text out: Granite Speech generation on FMS in one call.

    pipe = SpeechPipeline.from_pretrained("granite-speech-3.3-2b", dtype=torch.bfloat16)
    pipe.transcribe(["a.wav", "b.wav"])        # ["...", "..."], one per clip
    pipe.translate("a.wav", "French")          # ["..."]
    pipe.generate(prompt="What is 2 + 2?")     # text only: the LoRA adapter is off
    pipe.generate_ids(clip, prompt_ids=ids)    # token ids in and out, no tokenizer needed
    pipe.compile()                             # or from_pretrained(..., compile=True)

Every request is a batch: one clip or a list in, a list out. Eager, prompts are left-padded with
`fms.utils.generation.pad_input_ids` and decoded greedily with `fms.utils.generation.generate`
and FMS's KV cache. Compiled (`compile()`), the same requests run through
`granite_fms.generation.Generator`: bucketed shapes, a static KV cache and three graphs (audio
path, prefill, decode step), with CUDA graphs on a GPU. Either way each row keeps its new tokens
up to (not including) the first EOS.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from fms.utils.generation import generate, pad_input_ids

from granite_fms.checkpoint import load_model
from granite_fms.features import AudioClip
from granite_fms.generation import BucketPolicy, Generator, until_eos
from granite_fms.granite_speech import GraniteSpeech
from granite_fms.processor import GraniteSpeechProcessor

TRANSCRIBE_INSTRUCTION = "can you transcribe the speech into a written format?"
TRANSLATE_INSTRUCTION = "translate the speech to {language}"

Audio = AudioClip | list[AudioClip]
Prompt = str | Sequence[str]
PromptIds = Sequence[int] | Sequence[Sequence[int]]


@dataclass
class SpeechPipeline:
    """A `GraniteSpeech` model and its processor (whose tokenizer is optional).

    `eos_token_id` stops generation; it defaults to the tokenizer's EOS (None: no stop).
    """

    model: GraniteSpeech
    processor: GraniteSpeechProcessor = field(default_factory=GraniteSpeechProcessor)
    eos_token_id: int | None = None
    generator: Generator | None = None

    def __post_init__(self):
        if self.tokenizer is None:
            return
        audio_id = self.tokenizer.convert_tokens_to_ids(self.processor.audio_token)
        if audio_id != self.audio_token_id:
            raise ValueError(
                f"the tokenizer maps {self.processor.audio_token} to {audio_id} but the model's "
                f"audio_token_index is {self.audio_token_id}"
            )
        if self.eos_token_id is None:
            self.eos_token_id = self.tokenizer.eos_token_id

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        compile: bool = False,
    ) -> "SpeechPipeline":
        """Model and processor from a local Hugging Face checkpoint directory.

        The tokenizer is loaded if the directory has tokenizer files (the released ones do).
        `compile=True` is `compile()` with its defaults.
        """
        model = load_model(model_dir, dtype=dtype, device=device)
        pipe = cls(model, GraniteSpeechProcessor.from_pretrained(model_dir))
        return pipe.compile() if compile else pipe

    def compile(
        self,
        *,
        mode: str | None = None,
        backend: str | Callable = "inductor",
        policy: BucketPolicy | None = None,
    ) -> "SpeechPipeline":
        """Generate through compiled graphs from now on (the recommended way to serve).

        Each new bucket compiles on its first request (see `BucketPolicy`); `mode` defaults to
        "reduce-overhead" (CUDA graphs for the decode step) on a GPU and None on CPU.
        """
        self.generator = Generator(self.model, policy, backend=backend, mode=mode)
        return self

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def device(self) -> torch.device:
        return self.model.language_model.base_model.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.language_model.base_model.embedding.weight.dtype

    @property
    def audio_token_id(self) -> int:
        return self.model.config.audio_token_index

    def transcribe(self, audio: Audio, *, max_new_tokens: int = 200) -> list[str]:
        """Transcript of each clip."""
        prompt = self.processor.audio_token + TRANSCRIBE_INSTRUCTION
        return self.generate(audio, prompt, max_new_tokens=max_new_tokens)

    def translate(self, audio: Audio, language: str, *, max_new_tokens: int = 200) -> list[str]:
        """Translation of each clip's speech into `language` (e.g. "French")."""
        instruction = TRANSLATE_INSTRUCTION.format(language=language)
        return self.generate(
            audio, self.processor.audio_token + instruction, max_new_tokens=max_new_tokens
        )

    def generate(
        self,
        audio: Audio | None = None,
        prompt: Prompt | None = None,
        *,
        prompt_ids: PromptIds | None = None,
        max_new_tokens: int = 200,
        chat_template: bool = True,
    ) -> list[str]:
        """`generate_ids`, decoded with the tokenizer (special tokens skipped)."""
        if self.tokenizer is None:
            raise ValueError("decoding needs a tokenizer; use generate_ids for token ids")
        ids = self.generate_ids(
            audio,
            prompt,
            prompt_ids=prompt_ids,
            max_new_tokens=max_new_tokens,
            chat_template=chat_template,
        )
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)

    @torch.no_grad()
    def generate_ids(
        self,
        audio: Audio | None = None,
        prompt: Prompt | None = None,
        *,
        prompt_ids: PromptIds | None = None,
        max_new_tokens: int = 200,
        chat_template: bool = True,
    ) -> list[list[int]]:
        """Greedy new token ids for each request, up to (not including) the first EOS.

        audio: one clip or a list (wav/flac paths, or 1-D float arrays/tensors at 16 kHz);
            None for a text-only request, which runs the LLM with the LoRA adapter off
            (unless `model.set_adapter("on")`).
        prompt: text with one `<|audio|>` placeholder per request with audio and none without;
            one string for every clip, or one per clip. Needs a tokenizer; wrapped in the
            tokenizer's chat template as the user turn if it has one and `chat_template`.
            Default with audio: "<|audio|>" + `TRANSCRIBE_INSTRUCTION`.
        prompt_ids: instead of `prompt`, already tokenized (and templated) prompts: one list of
            ids for every clip, or one per clip, each holding the audio token id
            (`audio_token_id`) once with audio and never without. Needs no tokenizer.

        The placeholder of row i is expanded to as many audio tokens as clip i makes.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        features = None
        if audio is not None:
            features = self.processor.feature_extractor(audio).to(self.device)
        n_clips = None if features is None else features.input_features.shape[0]
        rows = self._prompt_rows(prompt, prompt_ids, n_clips, chat_template)
        if features is None:
            inputs = [torch.tensor(row, dtype=torch.long) for row in rows]
            extra = {}
        else:
            counts = self.model.audio_token_counts(features.input_features_mask).tolist()
            inputs = [
                self.processor.expand_audio_token_ids(row, self.audio_token_id, count)
                for row, count in zip(rows, counts, strict=True)
            ]
            extra = features.as_dict()
        if self.generator is not None:
            return self.generator.generate(
                inputs, features, max_new_tokens=max_new_tokens, eos_token_id=self.eos_token_id
            )
        ids, padding = pad_input_ids([row.to(self.device) for row in inputs])
        out = generate(
            self.model,
            ids,
            max_seq_len=ids.shape[1] + max_new_tokens,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            eos_token_id=self.eos_token_id,
            prepare_model_inputs_hook=self.model.prepare_inputs_for_generation,
            extra_kwargs={**extra, **padding},
        )
        return [until_eos(row, self.eos_token_id) for row in out[:, ids.shape[1] :].tolist()]

    def _prompt_rows(
        self,
        prompt: Prompt | None,
        prompt_ids: PromptIds | None,
        n_clips: int | None,
        chat_template: bool,
    ) -> list[list[int]]:
        """One unexpanded id list per request, placeholders checked."""
        if prompt is not None and prompt_ids is not None:
            raise ValueError("pass prompt or prompt_ids, not both")
        if prompt_ids is not None:
            nested = [prompt_ids] if _is_flat(prompt_ids) else prompt_ids
            rows = [[int(t) for t in row] for row in nested]
        else:
            if prompt is None:
                if n_clips is None:
                    raise ValueError("nothing to do: pass audio, a prompt or prompt_ids")
                prompt = self.processor.audio_token + TRANSCRIBE_INSTRUCTION
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            rows = [
                self._tokenize(i, text, n_clips is not None, chat_template)
                for i, text in enumerate(texts)
            ]
        if not rows:
            raise ValueError("empty list of prompts")
        if n_clips is not None and len(rows) == 1:
            rows *= n_clips
        if n_clips is not None and len(rows) != n_clips:
            raise ValueError(
                f"got {len(rows)} prompts for {n_clips} audio clips; pass one prompt for all "
                "clips or one per clip"
            )
        wanted = 0 if n_clips is None else 1
        for i, row in enumerate(rows):
            found = row.count(self.audio_token_id)
            if found != wanted:
                raise ValueError(
                    f"prompt {i} holds the audio token id ({self.audio_token_id}) {found} times; "
                    f"a request {'with' if wanted else 'without'} audio needs {wanted}"
                )
        return rows

    def _tokenize(self, i: int, text: str, has_audio: bool, chat_template: bool) -> list[int]:
        token = self.processor.audio_token
        if self.tokenizer is None:
            raise ValueError(
                "a text prompt needs a tokenizer and this pipeline has none; "
                f"pass prompt_ids with the audio token id {self.audio_token_id} instead"
            )
        found = text.count(token)
        if has_audio and found != 1:
            raise ValueError(f"prompt {i} has {found} {token} placeholders; with audio it needs 1")
        if not has_audio and found:
            raise ValueError(f"prompt {i} has {token} but no audio was given")
        if chat_template and getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return list(self.tokenizer(text)["input_ids"])


def _is_flat(prompt_ids: PromptIds) -> bool:
    """True for one id list, False for a list of them."""
    return len(prompt_ids) > 0 and torch.as_tensor(prompt_ids[0]).ndim == 0


__all__ = ["SpeechPipeline", "TRANSCRIBE_INSTRUCTION", "TRANSLATE_INSTRUCTION"]
