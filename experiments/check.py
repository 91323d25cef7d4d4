"""Reproducibility check: re-measure the latency headline ratios, compare with the committed run.

    python -m experiments.check                 # against results/runs/latency/cpu.json
    python -m experiments.check --against F     # any latency run file
    nox -s check

Takes the committed run's target workload (audio seconds x batch, new tokens), its e2e reps and
its thread count (unless --threads), builds the same models, and times e2e of hf_eager,
hf_compiled and the best compiled mode round robin after two warm-up calls each (the first
compiles), as `experiments.latency` does. Prints each headline ratio of both runs side by side,
then both runs' conditions. A ratio agrees when |now / committed - 1| is within the root of the
sum of both runs' squared spreads (a run that recorded no spread counts 0). Exit status 0 when
every ratio agrees, 1 when one drifts, both under clean conditions; 3 (inconclusive) when
either run is flagged, whatever the ratios say. Writes its own run file to scratch/runs/check/.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from experiments import harness
from experiments.latency import best_compiled, speedups
from experiments.models import MODELS, build_models, model_note
from experiments.modes import make_workload, modes_for

OTHERS = ("hf_eager", "hf_compiled")  # the headline ratios: the best compiled mode over these
AGREE, DRIFT, INCONCLUSIVE = 0, 1, 3  # exit statuses (2: bad arguments, as argparse has it)


def measure(run: dict, args, device: torch.device) -> dict[str, dict]:
    """e2e summaries of the headline modes on the committed run's target workload."""
    s = run["settings"]
    (audio_s, batch), reps = s["workloads"][0], tuple(s["reps"]["e2e"])
    dtype = harness.dtype_of(args)
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(prefix="check-") as tmp:
        harness.compile_cache(args, Path(tmp) / "inductor")  # default: cold compiles
        hf, fm = build_models(args.model, device, dtype, Path(tmp))
        modes = modes_for(hf, fm, device)
        w = make_workload(fm, audio_s, batch, s["new_tokens"])
        tasks = {}
        for mode in (*OTHERS, best_compiled(device)):
            e2e, _ = modes[mode](w, {"e2e": reps})
            e2e()  # compiles; round_robin's warm-up call is the second, as in latency
            tasks[mode] = harness.Task(e2e, reps)
        return harness.round_robin(tasks, device)


def compare(old: dict, new: dict) -> list[dict]:
    """Per headline ratio: both values, both spreads, the drift and whether it is within."""
    out = []
    for other in OTHERS:
        key, spread = f"e2e_speedup_vs_{other}", f"e2e_speedup_spread_vs_{other}"
        drift = new[key] / old[key] - 1
        allowed = harness.ratio_spread(old.get(spread) or 0.0, new[spread] or 0.0)
        out.append(
            {
                "ratio": key,
                "committed": old[key],
                "committed_spread": old.get(spread),
                "now": new[key],
                "now_spread": new[spread],
                "drift": drift,
                "allowed": allowed,
                "agrees": abs(drift) <= allowed,
            }
        )
    return out


def verdict(rows: list[dict], committed: dict, now: dict) -> tuple[int, str]:
    """The exit status and its sentence. A flagged run makes the check inconclusive whatever
    its ratios say: its spread is too wide to confirm the committed ratios, its bias too large
    to refute them."""
    agrees = all(r["agrees"] for r in rows)
    result = (
        "every headline ratio agrees within both runs' spread"
        if agrees
        else "a headline ratio drifts beyond both runs' spread"
    )
    flagged = [
        f"the {name} run is flagged ({'; '.join(c['reasons'])})"
        for name, c in (("committed", committed), ("new", now))
        if c["flagged"]
    ]
    if flagged:
        return INCONCLUSIVE, f"INCONCLUSIVE: {result}, but {' and '.join(flagged)}"
    if agrees:
        return AGREE, f"agrees: {result}, under clean conditions"
    return DRIFT, f"DRIFT: {result} under clean conditions: the result did not reproduce"


def _pct(value) -> str:
    return "not recorded" if value is None else f"{value:.1%}"


def conditions_line(c: dict) -> dict[str, str]:
    """A run's conditions as printable values, "not recorded" where it has none."""
    load = c["load_1min"]
    runnable, cpu = c.get("runnable"), c.get("cpu_over_wall")
    return {
        "threads": str(c.get("threads")),
        "cores": str(c.get("cores")),
        "runnable threads": "not recorded" if runnable is None else f"{runnable:.2f}",
        "1-min load start -> end": f"{load['start']:.1f} -> {load['end']:.1f}",
        "worst task spread": _pct(c.get("spread"))
        + (f" ({c['spread_task']})" if c.get("spread_task") else ""),
        "cpu / wall": "not recorded" if cpu is None else f"{cpu:.2f}",
        "flagged": ("yes: " + "; ".join(c["reasons"])) if c["flagged"] else "no",
    }


def report(path: Path, old: dict, new_conditions: dict, rows: list[dict]) -> list[str]:
    c_old, c_new = harness.conditions_of(old), new_conditions
    git = old["provenance"]["git"]
    lines = [
        f"check: {path} (commit {git['commit'][:7]}, {old['provenance']['date_utc'][:10]}) "
        f"against this run, workload {old['evidence']['target_workload']}",
        f"{'ratio':<28} {'committed':<20} {'now':<20} {'drift':>7} {'allowed':>8}",
    ]
    for r in rows:
        cells = [
            f"{value:.3f} (no spread)" if spread is None else f"{value:.3f} +-{spread:.1%}"
            for value, spread in (
                (r["committed"], r["committed_spread"]),
                (r["now"], r["now_spread"]),
            )
        ]
        lines.append(
            f"{r['ratio']:<28} {cells[0]:<20} {cells[1]:<20} {r['drift']:>+7.1%}"
            f" {r['allowed']:>8.1%}  {'agrees' if r['agrees'] else 'DRIFT'}"
        )
    lines.append(f"{'conditions':<28} {'committed':<40} now")
    now = conditions_line(c_new)
    for name, value in conditions_line(c_old).items():
        lines.append(f"{name:<28} {value:<40} {now[name]}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="tiny", choices=MODELS)
    parser.add_argument("--against", type=Path, help="a latency run file (default: committed)")
    threads = next(a for a in parser._actions if a.dest == "threads")
    threads.help = "torch threads (default: the committed run's, for like with like)"
    dtype = next(a for a in parser._actions if a.dest == "dtype")
    dtype.help = "the models' dtype (default: the committed run's)"
    args = parser.parse_args(argv)
    device = harness.device_of(args)
    scope = harness.scope_of(device, args.model)
    path = args.against or harness.RESULTS / "latency" / f"{scope}.json"
    if not path.is_file():
        raise SystemExit(f"check: no latency run file {path}: run experiments.latency first")
    old = json.loads(path.read_text())
    committed_threads = harness.conditions_of(old)["threads"]
    chosen = args.threads
    args.threads = args.threads or committed_threads
    # like with like: the committed run's dtype (files before --dtype: the device's default)
    args.dtype = args.dtype or old.get("dtype") or harness.dtype_name(harness.dtype_of(args))
    args.out = args.out or harness.SCRATCH
    run = harness.Run("check", scope, args, model=model_note(args.model, harness.dtype_of(args)))
    run.threads_from = "--threads" if chosen else "the committed run's"
    summaries = measure(old, args, device)
    new = speedups(summaries, best_compiled(device))
    rows = compare(old["evidence"], new)
    written = run.write(
        rows=[{"mode": m, **s} for m, s in summaries.items()],
        evidence=new,
        headline=[f"e2e_speedup_vs_{o}" for o in OTHERS],
        against=str(path),
        comparison=rows,
    )
    conditions = json.loads(written.read_text())["conditions"]
    print("\n".join(report(path, old, conditions, rows)))
    status, sentence = verdict(rows, harness.conditions_of(old), conditions)
    print(f"check: {sentence}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
