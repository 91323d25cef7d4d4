"""The plots of the result pages (matplotlib, Agg), drawn from the run files by report.py.

A plot is a grid of panels, one per run (or per run and workload); each function below draws
one panel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiments.pages import MODES

PARTS = ["features", "audio_path", "prefill", "decode"]


def _model_rows(run: dict) -> list[dict]:
    return [r for r in run["rows"] if r.get("model") != "3.3 encoder+projector"]


def stages_panel(ax, panel: tuple[dict, tuple]) -> None:
    """Each mode's stages stacked for one run and workload, the measured e2e as a black tick."""
    run, (audio_s, batch) = panel
    rows = [r for r in _model_rows(run) if (r["audio_s"], r["batch"]) == (audio_s, batch)]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    for y, mode in enumerate(modes):
        left = 0.0
        for i, part in enumerate(PARTS):
            r = next((r for r in rows if r["mode"] == mode and r["stage"] == part), None)
            if r is not None:
                width = r["median_ms"] * (r["new_tokens"] - 1 if part == "decode" else 1)
                ax.barh(y, width, left=left, color=f"C{i}", label=part if y == 0 else None)
                left += width
        e2e = next(r for r in rows if r["mode"] == mode and r["stage"] == "e2e")
        ax.plot([e2e["median_ms"]] * 2, [y - 0.4, y + 0.4], color="black", lw=2)
    ax.set_yticks(range(len(modes)), modes)
    ax.set_title(f"{run['scope']}: {run['model']}, {audio_s:g} s, batch {batch} (black: e2e)")
    ax.set_xlabel("ms (decode: median iteration x (new tokens - 1))")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)


def e2e_panel(ax, run: dict) -> None:
    """e2e (median, p10-p90) against audio length at batch 1, one line per mode."""
    rows = [r for r in _model_rows(run) if r["stage"] == "e2e" and r["batch"] == 1]
    for i, mode in enumerate(m for m in MODES if any(r["mode"] == m for r in rows)):
        pts = sorted(
            (r["audio_s"], r["median_ms"], r["p10_ms"], r["p90_ms"])
            for r in rows
            if r["mode"] == mode
        )
        x, m, lo, hi = (np.asarray(v) for v in zip(*pts, strict=True))
        ax.errorbar(x, m, yerr=[m - lo, hi - m], marker="o", capsize=3, label=mode, color=f"C{i}")
    ax.set_xlabel("audio s")
    ax.set_ylabel("e2e ms (median, p10-p90)")
    ax.set_yscale("log")
    ax.set_title(f"{run['scope']}: {run['model']}, batch 1", fontsize=9)
    ax.legend(fontsize=7)


def variants_panel(ax, run: dict) -> None:
    """The median time of each variant of an ablation, on its target workload."""
    rows = [r for r in run["rows"] if r.get("workload", run["workload"]) == run["workload"]]
    ax.bar(range(len(rows)), [r["median_ms"] for r in rows], color="C0")
    ax.set_xticks(
        range(len(rows)), [r["variant"] for r in rows], rotation=30, ha="right", fontsize=7
    )
    ax.set_ylabel("median ms")
    ax.set_title(f"{run['experiment'].removeprefix('ablate_')} ({run['scope']})", fontsize=9)


def _stage_panels(runs: list[dict]) -> list[tuple]:
    return [
        (run, w)
        for run in runs
        for w in dict.fromkeys((r["audio_s"], r["batch"]) for r in _model_rows(run))
    ]


# page -> [(file name, alt text, panels from the page's runs, draw, stacked vertically)]
PLOTS = {
    "latency": [
        ("latency_e2e", "end to end vs audio length", list, e2e_panel, False),
        ("latency_stages", "stage breakdown per mode", _stage_panels, stages_panel, True),
    ],
    "ablations": [("ablations", "median time per variant", list, variants_panel, False)],
}


def write_plots(page: str, runs: list[dict], out: Path) -> list[str]:
    """Draw the page's plots into `out`; returns the Markdown that shows them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    for name, alt, panels_of, draw, vertical in PLOTS.get(page, []):
        panels = panels_of(runs)
        shape, size = (
            ((len(panels), 1), (10, 1 + 2 * len(panels)))
            if vertical
            else ((1, len(panels)), (4.5 * len(panels), 4))
        )
        fig, axes = plt.subplots(*shape, figsize=size, squeeze=False)
        for ax, panel in zip(axes.flat, panels, strict=True):
            draw(ax, panel)
        fig.tight_layout()
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
        lines += [f"![{alt}](plots/{name}.png)", ""]
    return lines
