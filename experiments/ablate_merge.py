"""Ablation: the audio/text merge by gather (ours) vs by boolean-mask indexing -> a run file.

    python -m experiments.ablate_merge [--quick] [--device cuda --model 3.3-8b]

`GraniteSpeech.merge_audio` (cumsum/searchsorted/index_select, shapes known from the inputs)
against a boolean-mask merge as the reference and the seed project write it (the number of
selected rows depends on the data), on the target workload and a batch of 4: eager and compiled
times, graphs and graph breaks under the default `torch.compile`, and whether both give the
same embeddings.
"""

from __future__ import annotations

import torch

from experiments import harness
from experiments.models import Bench, run_bench
from experiments.modes import fms_inputs

WHAT = "audio/text merge of one request batch (embedding lookup included)"
HEADLINE = ["graph_breaks_boolean_mask", "boolean_over_gather_eager"]


def merge_boolean_mask(fm, input_ids, audio_embeds, frame_mask):
    """Reference-style merge: `embeds[is_audio] = audio[valid]` (data-dependent shapes)."""
    is_audio = input_ids == fm.config.audio_token_index
    embeds = fm.language_model.base_model.embedding(torch.where(is_audio, 0, input_ids))
    counts = fm.audio_token_counts(frame_mask)
    slots = torch.arange(audio_embeds.shape[1], device=audio_embeds.device)
    valid = slots[None, :] < counts[:, None]
    embeds[is_audio] = audio_embeds[valid].to(embeds.dtype)
    return embeds


def measure_one(b: Bench, w, suffix: str) -> tuple[list[dict], dict]:
    """Rows and evidence for one workload; evidence keys end in `suffix`."""
    from torch._dynamo.utils import counters

    fm = b.fm
    feats, _, ids, _ = fms_inputs(fm, w)
    mask = feats.input_features_mask
    audio = fm.audio_embeddings(feats.input_features, mask)
    variants = {"gather": fm.merge_audio, "boolean_mask": lambda *a: merge_boolean_mask(fm, *a)}
    args = (ids, audio, mask)
    ev = {f"outputs_equal{suffix}": bool(torch.equal(*(f(*args) for f in variants.values())))}
    tasks = {}
    for name, fn in variants.items():
        tasks[f"{name}_eager"] = harness.Task(lambda f=fn: f(*args), b.reps["stage"])
        compiled = torch.compile(fn, dynamic=False)
        breaks = sum(counters["graph_break"].values())
        graphs = counters["stats"]["unique_graphs"]
        ev[f"first_call_s_{name}{suffix}"] = harness.timed(lambda c=compiled: c(*args), b.device)
        ev[f"graphs_{name}{suffix}"] = counters["stats"]["unique_graphs"] - graphs
        ev[f"graph_breaks_{name}{suffix}"] = sum(counters["graph_break"].values()) - breaks
        tasks[f"{name}_compiled"] = harness.Task(lambda c=compiled: c(*args), b.reps["stage"])
    out = harness.round_robin(tasks, b.device)
    ev.update({f"merge_ms_{name}{suffix}": s["median_ms"] for name, s in out.items()})
    for mode in ("eager", "compiled"):
        ev[f"boolean_over_gather_{mode}{suffix}"] = (
            out[f"boolean_mask_{mode}"]["median_ms"] / out[f"gather_{mode}"]["median_ms"]
        )
    return [{"workload": w.label, "variant": name, **s} for name, s in out.items()], ev


def measure(b: Bench) -> dict:
    """The target workload (evidence keys without suffix) and the same with 4 rows (`_b4`)."""
    rows, ev = [], {}
    for w, suffix in ((b.workload, ""), (b.workload_of(b.workload.audio_s, 4), "_b4")):
        more_rows, more_ev = measure_one(b, w, suffix)
        rows += more_rows
        ev.update(more_ev)
    return {"rows": rows, "evidence": ev}


def main(argv: list[str] | None = None) -> int:
    return run_bench("ablate_merge", __doc__, argv, measure, what=WHAT, headline=HEADLINE)


if __name__ == "__main__":
    raise SystemExit(main())
