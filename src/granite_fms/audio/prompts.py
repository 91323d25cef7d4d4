"""Prompts as the model cards write them: a pinned system turn, then the task.

Without a system turn, Granite's chat template inserts a default one that holds today's date,
so the same audio would get a different prompt (and possibly a different transcript) every
day. Each preset pins the system turn its family's published examples use.

    preset = PRESETS["3.3"]
    preset.user_turn("transcribe", keywords=["FMS", "Granite"])
    # "<|audio|>can you transcribe the speech into a written format? Keywords: FMS, Granite"
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

AUDIO_TOKEN = "<|audio|>"

# The system turn of the granite-speech-3.3 model cards (date pinned as they pin it).
_SYSTEM_3_3 = (
    "Knowledge Cutoff Date: April 2024.\nToday's Date: April 9, 2025.\n"
    "You are Granite, developed by IBM. You are a helpful AI assistant"
)
# The system turn of the 4.x family's examples (transformers' granite_speech_plus docs).
_SYSTEM_4_X = (
    "Knowledge Cutoff Date: April 2024.\nToday's Date: December 19, 2024.\n"
    "You are Granite, developed by IBM. You are a helpful AI assistant"
)


@dataclass(frozen=True)
class PromptPreset:
    """The text of a request: system turn and user-turn instructions (any part overridable
    with `dataclasses.replace` or `PromptPreset.with_(...)`).

    system: the pinned system turn; None sends none (the chat template may then add its own).
    transcribe / translate: instructions after the audio placeholder; `translate` holds
        `{language}`.
    keywords: appended to the instruction when keywords are given; holds `{keywords}`.
    """

    system: str | None
    transcribe: str = "can you transcribe the speech into a written format?"
    translate: str = "translate the speech to {language}"
    keywords: str = " Keywords: {keywords}"
    audio_separator: str = ""  # text between the placeholder and the instruction

    def with_(self, **changes) -> "PromptPreset":
        return replace(self, **changes)

    def user_turn(
        self,
        task: str = "transcribe",
        *,
        language: str | None = None,
        keywords: Sequence[str] = (),
        audio_token: str = AUDIO_TOKEN,
    ) -> str:
        """The user turn for `task` ("transcribe" or "translate" to `language`)."""
        if task == "transcribe":
            if language is not None:
                raise ValueError("language is for task='translate'; transcription needs none")
            text = self.transcribe
        elif task == "translate":
            if not isinstance(language, str) or not language.strip():
                raise ValueError(
                    f"task='translate' needs a target language, e.g. 'French', got {language!r}"
                )
            text = self.translate.format(language=language)
        else:
            raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
        if isinstance(keywords, str):
            raise TypeError("keywords must be a list of strings, not one string")
        words = [k.strip() for k in keywords]
        if any(not k for k in words):
            raise ValueError(f"keywords must be non-empty strings, got {list(keywords)!r}")
        if words:
            text += self.keywords.format(keywords=", ".join(words))
        return audio_token + self.audio_separator + text

    def messages(self, user: str) -> list[dict[str, str]]:
        """Chat messages for one request: the pinned system turn (if any) and `user`."""
        system = [] if self.system is None else [{"role": "system", "content": self.system}]
        return [*system, {"role": "user", "content": user}]


PRESETS: dict[str, PromptPreset] = {
    "3.3": PromptPreset(system=_SYSTEM_3_3),
    "4.x": PromptPreset(system=_SYSTEM_4_X, audio_separator=" "),
}


def preset_for(audio_token_index: int) -> PromptPreset:
    """The preset of a checkpoint's family, told apart by its audio token id (3.3: 49159, the
    4.x family: 100352); other ids (tiny test checkpoints) get the 3.3 preset."""
    return PRESETS["4.x"] if audio_token_index == 100352 else PRESETS["3.3"]


__all__ = ["AUDIO_TOKEN", "PRESETS", "PromptPreset", "preset_for"]
