"""Markdown of the run files, one renderer per kind of experiment (experiments/report.py).

A renderer takes one run file and returns the lines of its section: provenance first, then its
tables, then the values the docs may quote. `generic_lines` renders any run file from its
`rows` and `evidence`, so a new experiment needs no renderer to appear on the site.
"""

from __future__ import annotations

from experiments.harness import conditions_of
from experiments.modes import MODE_NOTES, STAGE_NOTES

ABLATIONS = ("kv_cache", "sdpa", "fused_weights", "freezing", "merge")
# page -> (title, experiments on it, in order); experiments not listed get a page each.
PAGES = {
    "parity": ("Parity with Hugging Face", ["parity"]),
    "census": ("Graph breaks and recompiles", ["census", "census_generator"]),
    "latency": ("Latency", ["latency"]),
    "ablations": ("Ablations", [f"ablate_{name}" for name in ABLATIONS]),
    "profile": ("Profile of the compiled regions", ["profile_regions"]),
    "eval": ("Transcription: WER and RTFx", ["eval"]),
    "longform": ("Long-form speed", ["longform"]),
    "serving": ("Serving under load", ["bench_serve"]),
}
MODES = list(MODE_NOTES)


def page_of(experiments) -> dict[str, str]:
    """experiment -> the page it is shown on (its own page unless PAGES groups it)."""
    grouped = {e: page for page, (_, members) in PAGES.items() for e in members}
    return {e: grouped.get(e, e) for e in experiments}


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def cell(r: dict | None) -> str:
    """median [p10-p90] n of a timing summary."""
    if not r or "median_ms" not in r:
        return "-"
    if r["n"] == 1:
        return f"{r['median_ms']:.4g}"
    return f"{r['median_ms']:.4g} [{r['p10_ms']:.3g}-{r['p90_ms']:.3g}] n={r['n']}"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines + [""]


def columns(rows: list[dict], keys: list[str]) -> list[str]:
    """A table of dicts: one column per key (headed by it, underscores as spaces)."""
    return table([k.replace("_", " ") for k in keys], [[fmt(r.get(k)) for k in keys] for r in rows])


# ----- provenance ---------------------------------------------------------------------------


def code_state(run: dict) -> str:
    git = run["provenance"]["git"]
    commit = (git.get("commit") or "unknown")[:7]
    code = [p for p in git.get("dirty_paths") or [] if p.startswith(("src/", "experiments/"))]
    if git.get("code_diff_sha256"):
        return f"{commit} + uncommitted changes, diff sha256 {git['code_diff_sha256'][:12]}"
    if code and git.get("diff_sha256"):
        return f"{commit} + uncommitted changes, diff sha256 {git['diff_sha256'][:12]} (whole tree)"
    if code:
        return f"{commit} (dirty: uncommitted changes to src/ or experiments/, no diff hash)"
    return commit


def machine(run: dict) -> str:
    d = run["provenance"]["device"]
    if d.get("gpu"):
        return f"{d['gpu']['name']} (host CPU {d['cpu']})"
    flags = d.get("cpu_bf16_flags")
    bf16 = "" if flags is None else ", native bf16" if flags else ", no native bf16"
    return f"CPU {d['cpu']}{bf16}, {d['torch_threads']} threads"


def provenance_line(run: dict) -> str:
    p, load = run["provenance"], run["provenance"].get("load_average") or {}
    v = p["versions"]
    versions = ", ".join(f"{k} {v[k]}" for k in ("torch", "transformers", "ibm-fms") if v.get(k))
    mismatch = (p.get("constraints") or {}).get("mismatches")
    if mismatch is not None:  # a package the session did not install is no mismatch
        mismatch = {n: m for n, m in mismatch.items() if m["installed"] is not None}
    pins = "pins: as constraints.txt" if mismatch == {} else f"pins differ: {mismatch}"
    if mismatch is None:
        pins = "pins: not recorded"
    cores = p["device"].get("cpu_affinity") or 1
    trees = ", ".join(f"{k}/ tree {v[:10]}" for k, v in (p["git"].get("trees") or {}).items())
    line = (
        f"{p['date_utc'][:16].replace('T', ' ')} UTC · {machine(run)} · {run['model']} · "
        f"{versions}; {pins} · commit {code_state(run)}{f' ({trees})' if trees else ''} · "
        f"{run['runtime_s']:.0f} s"
    )
    if load:
        line += f" · load {load['start'][0]:.1f} -> {load['end'][0]:.1f} on {cores} cores"
    if run.get("quick"):
        line += " · **--quick**"
    if run.get("imported"):
        line += f" · {run['imported']}"
    return line


def conditions_line(run: dict) -> str:
    """What a run's timings ran under (`harness.judge`), in one line, and the verdict."""
    c = conditions_of(run)
    if c.get("recorded") is False:
        head = f"not recorded (a run from before the harness measured them); {c['note']}"
    else:
        runnable, cpu = c.get("runnable"), c.get("cpu_over_wall")
        head = f"{c['threads']} torch thread{'s' if c['threads'] != 1 else ''}" + (
            f", {runnable:.1f} runnable threads on {c['cores']} cores, cpu/wall {cpu:.2f}, "
            f"worst median spread +-{c['spread']:.0%} ({c['spread_task']})"
            if c["timed_tasks"] and runnable is not None and c["spread"] is not None
            else f"; {c.get('note', '')}"
        )
    if not c["flagged"]:
        return f"{head}: not flagged"
    return f"{head}: **flagged**: {'; '.join(c['reasons'])}"


def flag_note(run: dict) -> str | None:
    """The warning a flagged run's figures carry wherever they are quoted; None if clean."""
    c = conditions_of(run)
    return f"flagged: {'; '.join(c['reasons'])}" if c["flagged"] else None


NOT_THIS_TREE = (
    "historical run, not measured on this tree (`python -m experiments.gpu_suite` measures it)"
)


def where(run: dict) -> dict:
    """For templates: `where` (one line), `machine`, `model`, `date`, `code`, `workload`,
    and `flagged` (the warning of a flagged run, else an empty string)."""
    date, code = run["provenance"]["date_utc"][:10], code_state(run)
    note = flag_note(run)
    line = f"{machine(run)}, {run['model']}, {date}, commit {code}"
    if run.get("imported"):
        line += f" ({NOT_THIS_TREE})"
    workload = run.get("workload") or (run.get("evidence") or {}).get("target_workload", "-")
    return dict(
        where=line + (f" (**{note}**)" if note else ""),
        machine=machine(run),
        model=run["model"],
        date=date,
        code=code,
        workload=workload,
        flagged=note or "",
    )


def runs_table(runs: list[dict], links: dict[str, str]) -> list[str]:
    """One row per run file: experiment (linked), scope, date, machine, model, code, headline."""
    rows = [
        dict(
            experiment=f"[{r['experiment']}]({links[r['experiment']]})",
            scope=r["scope"],
            date=where(r)["date"],
            machine=machine(r),
            model=r["model"],
            code=code_state(r),
            s=f"{r['runtime_s']:.0f}",
            conditions=f"**{flag_note(r)}**" if flag_note(r) else "not flagged",
            headline=("⚠ " if flag_note(r) else "")
            + "; ".join(f"{k} {fmt(r['evidence'].get(k))}" for k in r.get("headline", [])),
        )
        for r in runs
    ]
    return columns(rows, list(rows[0]) if rows else [])


def run_header(run: dict, title: str | None = None) -> list[str]:
    lines = [f"## {title or run['experiment']}: {run['scope']}", ""]
    lines += [
        f"Provenance: {provenance_line(run)}. Raw data: [{run['_file']}](runs/{run['_file']}).",
        "",
        f"Conditions: {conditions_line(run)}.",
        "",
    ]
    c = conditions_of(run)
    if c["flagged"]:
        lines += [
            '!!! warning "Flagged: measured under conditions that make its timings and ratios '
            'untrustworthy"',
            "",
            *(f"    - {reason}" for reason in c["reasons"]),
            "",
            "    Flagged above these thresholds (experiments/harness.py): runnable threads "
            "(ours included) over the cores the run may use "
            f"{c['thresholds']['runnable_over_cores']}, the spread of a timed task's median "
            f"+-{c['thresholds']['spread']:.0%}"
            + (
                f", CPU over wall time below {c['thresholds']['cpu_over_wall']}"
                if c["thresholds"]["cpu_over_wall"] is not None
                else ""
            )
            + ". Rerun on a quieter machine; `nox -s check` compares a new run with it.",
            "",
        ]
    if run.get("imported"):
        lines += [f"**{NOT_THIS_TREE[0].upper()}{NOT_THIS_TREE[1:]}.**", ""]
    if run.get("not_measured"):
        lines += [f"- not measured, `{k}`: {why}" for k, why in run["not_measured"].items()] + [""]
    return lines


def evidence_lines(run: dict) -> list[str]:
    """The run's evidence, folded (pymdownx.details): the values the docs may quote."""
    ev = run.get("evidence") or {}
    rows = table(["key", "value"], [[f"`{k}`", fmt(v)] for k, v in ev.items()])
    return ['??? note "Values the docs may quote"', ""] + [f"    {line}" for line in rows]


# ----- pages --------------------------------------------------------------------------------


def parity_lines(run: dict) -> list[str]:
    t, cases = run["tolerances"], "; ".join(f"`{k}`: {v}" for k, v in run["cases"].items())
    lines = run_header(run, "Parity")
    lines += [
        f"Result: **{'PASS' if run['passed'] else 'FAIL'}** {'; '.join(run['failures'])}",
        "",
        f"Configurations: {cases}. Frames per dtype: {run['lengths']}. Tolerances: "
        f"fp32 {t['fp32']:g} (gated), bf16 {t['bf16']:g} (reported), fp64 batch "
        f"{t['fp64']:g} (gated). {t['bf16_rationale']} {t['batch_rule']}",
        "",
    ]
    lines += columns(
        run["rows"],
        [
            "config",
            "dtype",
            "stage",
            "max_abs",
            "max_rel",
            "worst_at",
            "within_tolerance",
            "gate",
            "hf_bf16_vs_hf_fp32_max_rel",
        ],
    )
    lines += [
        "### Conditioning of the random checkpoints",
        "",
        "Rounding gain: relative change "
        "of HF's fp32 audio embeddings over the relative change of the input, for a "
        "perturbation of one fp32 rounding (2^-24). Batched vs alone: FMS on a padded "
        "batch vs FMS one clip at a time (rounding only).",
        "",
    ]
    conditioning = [{"config": c, **v} for c, v in run["conditioning"].items()]
    lines += columns(
        conditioning,
        [
            "config",
            "rounding_gain",
            "fp32_batched_vs_alone_max_rel",
            "bf16_batched_vs_alone_max_rel",
            "fp64_batched_vs_alone_max_rel",
            "lora_effect_min_rel",
        ],
    )
    lines += ["### Greedy decoding: HF `generate` vs the Generator's loop, 20 tokens", ""]
    lines += columns(
        run["generation"],
        [
            "config",
            "dtype",
            "prompt",
            "frames",
            "identical_fraction",
            "full_match",
            "hf_bf16_vs_hf_fp32_identical_fraction",
        ],
    )
    return lines + evidence_lines(run)


CENSUS_COLUMNS = [
    "graphs",
    "graph_breaks",
    "fullgraph_ok",
    "graphs_first_call",
    "recompiles_sweep",
    "recompiles_second",
    "recompiles_new_blocks",
    "recompiles_switches",
    "padded_shapes",
    "max_compiles_per_frame",
    "recompile_limit_hits",
    "compile_s",
    "graphs_wide_symbolic",
    "graphs_wide_second_symbolic",
    "graphs_wide_regional",
    "graphs_wide_static",
    "graphs_wide_second_static",
]


def census_lines(run: dict) -> list[str]:
    lines = run_header(run, "Census" if run["experiment"] == "census" else "Bucketed Generator")
    for name, requests in run["requests"].items():
        clips = ", ".join(
            "+".join(f"{s:g}" for s in r["seconds"]) + f" s ({r['suffix']})" for r in requests
        )
        lines.append(f"- {name}: {clips}")
    lines.append("")
    keys = [c for c in CENSUS_COLUMNS if any(c in r for r in run["rows"])]
    lines += columns(
        [{**r, "key": f"`{r['key']}`", "entry": f"`{r['entry']}`"} for r in run["rows"]],
        ["key", "entry", *keys],
    )
    for r in run["rows"]:
        if r.get("break_reasons") or r.get("fullgraph_error"):
            lines += [f"**`{r['key']}`: {r['graph_breaks']} break(s)**", ""]
            lines += [f"- {reason}" for reason in r["break_reasons"]]
            lines += [f"- fullgraph=True: {r['fullgraph_error']}"] if r["fullgraph_error"] else []
            lines.append("")
    return lines + evidence_lines(run)


def latency_lines(run: dict) -> list[str]:
    ev, rows = (
        run["evidence"],
        [r for r in run["rows"] if r.get("model") != "3.3 encoder+projector"],
    )
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    workloads = list(dict.fromkeys((r["audio_s"], r["batch"]) for r in rows))

    def find(**match):
        return next((r for r in run["rows"] if all(r.get(k) == v for k, v in match.items())), None)

    lines = run_header(run, "Latency") + columns(run["targets"], ["target", "measured", "met"])
    lines += [f"- `{m}`: {run['modes'][m]}" for m in modes] + [""]
    lines += ["### End to end, ms (median [p10-p90] n)", ""]
    lines += table(
        ["audio s", "batch", "new tokens", *modes, f"hf_eager / {ev['best_compiled_mode']}"],
        [
            [
                a,
                b,
                find(audio_s=a, batch=b, stage="e2e")["new_tokens"],
                *(cell(find(audio_s=a, batch=b, mode=m, stage="e2e")) for m in modes),
                fmt(ev[f"e2e_speedup_vs_hf_eager_{a:g}s_b{b}"]),
            ]
            for a, b in workloads
        ],
    )
    lines += ["### Stages, ms", ""] + [f"- `{s}`: {note}" for s, note in STAGE_NOTES.items()] + [""]
    for a, b in workloads:
        cells = {s: [find(audio_s=a, batch=b, mode=m, stage=s) for m in modes] for s in STAGE_NOTES}
        lines += [f"**{a:g} s, batch {b}**", ""]
        lines += table(["stage", *modes], [[s, *map(cell, c)] for s, c in cells.items() if any(c)])
        memory = [find(audio_s=a, batch=b, mode=m, stage="peak_memory") for m in modes]
        lines += [
            "Peak memory of one e2e call, MB ("
            + memory[0]["kind"]
            + "): "
            + ", ".join(f"{m} {r['peak_mb']:.0f}" for m, r in zip(modes, memory, strict=True))
            + ".",
            "",
        ]
    real = [r for r in run["rows"] if r.get("model") == "3.3 encoder+projector"]
    if real:
        dtype = run.get("dtype") or "float32"
        lines += [f"### Real 3.3 encoder + projector shapes, eager, {dtype}", ""]
        lines += columns([{**r, "ms": cell(r)} for r in real], ["audio_s", "mode", "stage", "ms"])
    f = run["bandwidth_floor"]
    lines += [
        "### Memory-bandwidth floor of a batch-1 decode step",
        "",
        f"LLM weights {f['llm_weight_bytes'] / 1e9:.3g} GB over a device-to-device copy "
        f"bandwidth of {f['bandwidth_gbs']:.0f} GB/s: floor {f['floor_ms']:.3g} ms; the "
        f"best compiled decode step is {fmt(ev.get('decode_vs_floor'))}x the floor (a bound "
        "for weights streamed from memory: where the CPU caches hold much of them, a step can "
        "beat it).",
        "",
    ]
    agree = "; ".join(
        f"{w}: " + ", ".join(f"{m} {v:.0%}" for m, v in a.items())
        for w, a in run["token_agreement"].items()
    )
    return lines + [f"Greedy tokens equal to hf_eager's: {agree}.", ""] + evidence_lines(run)


def variants_lines(run: dict) -> list[str]:
    lines = run_header(run, run["experiment"]) + [f"{run['what']}; workload {run['workload']}.", ""]
    keys = ["variant", "ms", *(["workload"] if "workload" in run["rows"][0] else [])]
    return lines + columns([{**r, "ms": cell(r)} for r in run["rows"]], keys) + evidence_lines(run)


def profile_lines(run: dict) -> list[str]:
    lines = run_header(run, "Profile")
    for region, meta in run["regions"].items():
        lines += [
            f"**{region}** ({meta['time_kind']}, {meta['total_ms_per_call']:.3g} ms per "
            f"call, {meta['calls']} calls)",
            "",
        ]
        ops = [
            {**r, "op": f"`{r['op']}`", "share": f"{r['share']:.1%}"}
            for r in run["rows"]
            if r["region"] == region
        ]
        lines += columns(ops, ["op", "ms_per_call", "share", "count_per_call"])
    return lines + evidence_lines(run)


SERVE_COLUMNS = [
    "concurrency",
    "requests",
    "errors",
    "throughput_audio_s_per_s",
    "p50_s",
    "p90_s",
    "p99_s",
    "batches",
    "mean_batch_size",
    "batch_sizes",
    "load_before",
    "load_after",
]


def serve_lines(run: dict) -> list[str]:
    """One row per concurrency; `batch_sizes` is how many batches of each size range formed."""
    rows = [
        {**r, "batch_sizes": ", ".join(f"{k}: {n}" for k, n in r["batch_sizes"].items())}
        for r in run["rows"]
    ]
    lines = run_header(run, "Serving under load") + [f"{run['what']}.", ""]
    return lines + columns(rows, SERVE_COLUMNS) + evidence_lines(run)


def generic_lines(run: dict) -> list[str]:
    """Any run file: its rows (every scalar column) and its evidence."""
    rows = run.get("rows") or []
    keys = list(
        dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, dict | list))
    )
    return run_header(run) + columns(rows, keys) + evidence_lines(run)


RENDER = {
    "parity": parity_lines,
    "census": census_lines,
    "census_generator": census_lines,
    "latency": latency_lines,
    "profile_regions": profile_lines,
    "bench_serve": serve_lines,
    **{name: variants_lines for name in PAGES["ablations"][1]},
}
