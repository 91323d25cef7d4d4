"""The run files rendered for the site: result pages, plots, and the values pages quote.

    python -m experiments.report [--runs results/runs] [--out docs/results]

Reads every `<runs>/<experiment>/<scope>.json` and writes into `<out>`: one page per group of
experiments (PAGES; any other experiment gets a page of its own, rendered generically from its
`rows` and `evidence`), the plots, `index.md` (every run with its machine, date, commit,
headline values and whether its conditions flag it), the raw run files, and `evidence.json`:
{experiment: {scope: {key: value}}}, where a key a run lists under `not_measured` reads "not
measured: <reason>". tools/gen_docs.py calls `build()` when the docs are built; a page that
quotes a key no run file has fails there.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from experiments.harness import REPO, RESULTS
from experiments.pages import PAGES, RENDER, generic_lines, page_of, runs_table, where

OUT = REPO / "docs" / "results"


def load_runs(runs: Path) -> dict[str, dict[str, dict]]:
    """experiment -> scope -> run file (`adopt`ed if another tool wrote it)."""
    out: dict[str, dict[str, dict]] = {}
    for path in sorted(runs.glob("*/*.json")):
        run = json.loads(path.read_text())
        run = run if "experiment" in run else adopt(path, run)
        run["_file"] = path.relative_to(runs).as_posix()
        out.setdefault(run["experiment"], {})[run["scope"]] = run
    return out


def flat(data: dict, prefix: str = "") -> dict:
    """Nested dicts as one dict of scalars, keys joined by "_" (lists are left out)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}_"))
        elif not isinstance(value, list):
            out[f"{prefix}{key}"] = value
    return out


def adopt(path: Path, data: dict) -> dict:
    """A JSON with provenance that another tool wrote into runs/ (`granite-fms eval --output
    results/runs/eval/cpu.json`): experiment and scope from its path, its scalars as evidence,
    its `items` as rows."""
    load = (data.get("settings") or {}).get("load_average") or {}
    provenance = dict(
        data["provenance"],
        load_average={"start": load.get("before", [0]), "end": load.get("after", [0])},
    )
    evidence = flat({k: v for k, v in data.items() if k not in ("provenance", "items")})
    return {
        "experiment": path.parent.name,
        "scope": path.stem,
        "model": str(data.get("model", "-")),
        "quick": False,
        "runtime_s": data.get("runtime_s", 0.0),
        "provenance": provenance,
        "rows": [flat(item) for item in data.get("items", [])],
        "evidence": evidence,
        "headline": [k for k in evidence if k.endswith(("_wer", "_rtfx"))],
    }


def evidence(runs: dict) -> dict:
    out: dict = {}
    for experiment, scopes in runs.items():
        for scope, run in scopes.items():
            values = dict(run.get("evidence") or {})
            values.update(
                {k: f"not measured: {why}" for k, why in (run.get("not_measured") or {}).items()}
            )
            out.setdefault(experiment, {})[scope] = values
    return out


def build(runs_dir: Path = RESULTS, out: Path = OUT) -> dict:
    """Write the pages; returns `evidence` (experiment -> scope -> key -> value) and `runs`
    (experiment -> scope -> where it ran: `where`, `machine`, `model`, `date`, `code`)."""
    from experiments.plots import write_plots

    runs = load_runs(runs_dir)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(runs_dir, out / "runs", ignore=shutil.ignore_patterns("*.md"))
    page_of_experiment = page_of(runs)
    grouped = {e for _, members in PAGES.values() for e in members}
    pages = {**PAGES, **{e: (e, [e]) for e in runs if e not in grouped}}
    nav = []
    for page, (title, experiments) in pages.items():
        present = [runs[e][s] for e in experiments if e in runs for s in runs[e]]
        if not present:
            continue
        lines = ["---", "hide:", "  - navigation", "---", "", f"# {title}", ""]
        for run in present:
            lines += RENDER.get(run["experiment"], generic_lines)(run)
        lines += write_plots(page, present, out / "plots")
        (out / f"{page}.md").write_text("\n".join(lines) + "\n")
        nav.append({title: f"results/{page}.md"})
    index = [
        "# Results",
        "",
        "Every number on this site comes from a run file in `results/runs/`, "
        "written by a script in `experiments/` with the machine, toolchain and code it ran "
        "on; these pages are rendered from them when the site is built. The conditions column "
        "says which runs are flagged: timed under load (more runnable threads than cores), "
        "with a wide spread or with too little CPU time (`experiments/harness.py`), so their "
        "ratios are not to be trusted; their figures carry that warning wherever quoted.",
        "",
    ]
    all_runs = [r for scopes in runs.values() for r in scopes.values()]
    index += runs_table(all_runs, {e: f"{p}.md" for e, p in page_of_experiment.items()})
    (out / "index.md").write_text("\n".join(index) + "\n")
    (out / "nav.json").write_text(json.dumps(nav) + "\n")  # read by tools/mkdocs_hooks.py
    values = evidence(runs)
    (out / "evidence.json").write_text(json.dumps(values, indent=1) + "\n")
    where_run = {e: {s: where(r) for s, r in scopes.items()} for e, scopes in runs.items()}
    return {"evidence": values, "runs": where_run}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--runs", type=Path, default=RESULTS, help="run files (default results/runs)"
    )
    parser.add_argument("--out", type=Path, default=OUT, help="pages (default docs/results)")
    args = parser.parse_args(argv)
    build(args.runs, args.out)
    print(f"report: wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
