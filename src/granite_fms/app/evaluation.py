"""Word and character error rates (jiwer) after one documented normaliser, and a report page.

The normaliser, applied to references and hypotheses alike:

1. lower case;
2. punctuation removed (every Unicode punctuation character, apostrophes included:
   "don't" -> "dont");
3. runs of whitespace collapsed to one space, and the ends stripped.

Nothing else: numbers are not spelled out and spellings are not unified, unlike Whisper's
English normaliser that the Open ASR leaderboard uses, so figures on sets with digits or
British spellings can differ from the leaderboard's. LibriSpeech's references are upper-case
words without punctuation or digits, which this normaliser meets as they are.

WER and CER are corpus-level (total edits / total reference words or characters), as jiwer
computes them over lists; CER counts the spaces between words as characters.
"""

from collections.abc import Sequence
from typing import Any

import jiwer

from granite_fms.provenance import one_line

NORMALISER = (
    "lower case; Unicode punctuation removed (apostrophes too); whitespace collapsed and stripped"
)

_normalise = jiwer.Compose(
    [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip()]
)


def normalise(text: str) -> str:
    return _normalise(text)


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus WER and CER (fractions, not percent) of normalised texts, with the word counts."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references for {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no references to score")
    refs = [normalise(t) for t in references]
    hyps = [normalise(t) for t in hypotheses]
    words = jiwer.process_words(refs, hyps)
    return {
        "wer": words.wer,
        "cer": jiwer.cer(refs, hyps),
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "reference_words": words.substitutions + words.deletions + words.hits,
    }


def markdown(report: dict[str, Any]) -> str:
    """The eval report as a page: one row per mode, then the settings."""
    lines = [
        "# Transcription accuracy and speed",
        "",
        f"Provenance: {one_line(report['provenance'])}",
        "",
        f"Model: `{report['model']}` · manifest `{report['manifest']['path']}` "
        f"({report['manifest']['items']} clips, {report['manifest']['audio_hours']:.3f} h) · "
        f"device {report['settings']['device']}, dtype {report['settings']['dtype']}",
        "",
        "| mode | WER % | CER % | RTFx | tokens/s | wall s | warm-up s | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["modes"].items():
        warmup = "-" if m["warmup_s"] is None else f"{m['warmup_s']:.1f}"
        lines.append(
            f"| {name} | {100 * m['wer']:.2f} | {100 * m['cer']:.2f} | {m['rtfx']:.1f} | "
            f"{m['tokens_per_s']:.1f} | {m['wall_s']:.1f} | {warmup} | {m['failed']} |"
        )
    if report["random_weights"]:
        lines += [
            "",
            "Random weights (`--variant`): the texts, and so WER and CER, mean nothing; the "
            "speed is that of decoding every clip's whole budget (such a model rarely stops).",
        ]
    if "same_text" in report:
        lines += ["", f"Clips with the same text in every mode: {report['same_text']}."]
    lines += [
        "",
        f"Normaliser: {report['normaliser']}. RTFx = audio seconds / wall seconds of the timed "
        "pass (audio decoding included); tokens/s = new tokens / wall seconds. A compiled "
        "mode's timed pass follows a warm-up pass over the same clips (compiles every bucket).",
        "",
        "Settings: "
        + ", ".join(
            f"`{k}={v}`"
            for k, v in report["settings"].items()
            if k not in ("device", "load_average")
        )
        + ".",
    ]
    load = report["settings"].get("load_average")
    if load:
        before, after = ("/".join(f"{x:.1f}" for x in load[k]) for k in ("before", "after"))
        lines += ["", f"Load average (1, 5, 15 min): {before} before the run, {after} after."]
    return "\n".join(lines) + "\n"


__all__ = ["NORMALISER", "error_rates", "markdown", "normalise"]
