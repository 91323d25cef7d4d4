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

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
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


def score(
    rows: Sequence[Mapping[str, Any]],
    references: Mapping[str, str],
    wall: float,
    warmup: float | None = None,
) -> dict[str, Any]:
    """One mode's figures from its rows (`pred_text`; failed rows have an `error`): error
    rates of the clips done, RTFx and tokens/s over the timed pass's `wall` seconds."""
    good = [r for r in rows if "error" not in r]
    rates = (
        error_rates([references[r["audio_filepath"]] for r in good], [r["pred_text"] for r in good])
        if good
        else {"wer": None, "cer": None}
    )
    audio = sum(r["duration"] for r in good)
    tokens = sum(len(s["tokens"]) for r in good for s in r["segments"])
    return {
        **rates,
        "rtfx": audio / wall,
        "tokens_per_s": tokens / wall,
        "new_tokens": tokens,
        "wall_s": wall,
        "warmup_s": warmup,
        "audio_s": audio,
        "items": len(good),
        "failed": len(rows) - len(good),
    }


def summary(mode: str, figures: Mapping[str, Any]) -> str:
    """One line of a mode's figures."""
    rates = (
        "no clip scored"
        if figures["wer"] is None
        else f"WER {100 * figures['wer']:.2f} %, CER {100 * figures['cer']:.2f} %"
    )
    return f"{mode}: {rates}, RTFx {figures['rtfx']:.1f}, {figures['tokens_per_s']:.1f} tokens/s"


def report(
    model: str,
    random_weights: bool,
    manifest: Path,
    items: Sequence[Any],
    settings: Mapping[str, Any],
    modes: Mapping[str, Mapping[str, Any]],
    texts: Mapping[str, Mapping[str, str]],
    origin: Mapping[str, Any],
) -> dict[str, Any]:
    """The eval report: model, manifest (path, SHA-256, size), normaliser, settings, each
    mode's figures, how many clips got the same text in every mode, each clip's hypotheses
    (`items`: objects with `audio_filepath`, `reference` and `duration`), provenance."""
    out: dict[str, Any] = {
        "model": model,
        "random_weights": random_weights,
        "manifest": {
            "path": str(manifest),
            "sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
            "items": len(items),
            "audio_hours": sum(i.duration or 0.0 for i in items) / 3600,
        },
        "normaliser": NORMALISER,
        "settings": dict(settings),
        "modes": dict(modes),
        "provenance": dict(origin),
    }
    if len(texts) > 1:
        keys = set.intersection(*(set(t) for t in texts.values()))
        same = sum(len({t[k] for t in texts.values()}) == 1 for k in keys)
        out["same_text"] = f"{same} of {len(keys)}"
    out["items"] = [
        {
            "audio_filepath": i.audio_filepath,
            "reference": i.reference,
            "hypotheses": {mode: t.get(i.audio_filepath) for mode, t in texts.items()},
        }
        for i in items
    ]
    return out


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
        wer, cer = (
            ("-", "-") if m["wer"] is None else (f"{100 * m['wer']:.2f}", f"{100 * m['cer']:.2f}")
        )
        lines.append(
            f"| {name} | {wer} | {cer} | {m['rtfx']:.1f} | "
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


__all__ = ["NORMALISER", "error_rates", "markdown", "normalise", "report", "score", "summary"]
