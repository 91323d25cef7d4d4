"""Reproduce everything: `nox -s bench parity eval docs` (the main job) and `nox -s tests`.

Every session installs the package with the exact toolchain the results were produced with
(`-c constraints.txt`); pyproject.toml only holds compatible lower bounds. Arguments after `--`
go to every experiment of a session, e.g. `nox -s bench -- --quick`, `nox -s parity -- --full`.
"""

from __future__ import annotations

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

PYTHON = "3.11"
CONSTRAINTS = ("-c", "constraints.txt")
BENCH = [  # (module, minutes on 2 unloaded cores), in the order they run
    ("experiments.census", 4),
    ("experiments.census_generator", 2),
    ("experiments.latency", 6),
    ("experiments.ablate_kv_cache", 1),
    ("experiments.ablate_sdpa", 1),
    ("experiments.ablate_fused_weights", 1),
    ("experiments.ablate_freezing", 1),
    ("experiments.ablate_merge", 1),
    ("experiments.profile_regions", 1),
    ("experiments.bench_serve", 3),
]


def _install(session: nox.Session, extras: str) -> None:
    session.install(*CONSTRAINTS, "-e", f".[{extras}]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """The package's layers (import-linter), then unit, parity and compile tests on CPU (tiny
    checkpoints built with HF's own classes)."""
    _install(session, "dev")
    session.run("lint-imports")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install(*CONSTRAINTS, "ruff")
    paths = ("src", "tests", "experiments", "tools", "noxfile.py")
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)


@nox.session(python=PYTHON)
def parity(session: nox.Session) -> None:
    """FMS vs HF parity per stage, dtype and config -> results/runs/parity/."""
    _install(session, "dev")
    session.run("python", "-m", "experiments.parity", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Graph-break census, latency, ablations and profile -> results/runs/<experiment>/."""
    _install(session, "dev")
    session.log(f"bench: {len(BENCH)} experiments, about {sum(m for _, m in BENCH)} min")
    for module, _ in BENCH:
        session.run("python", "-m", module, *session.posargs)


@nox.session(python=PYTHON)
def check(session: nox.Session) -> None:
    """Reproducibility: re-measure the latency headline ratios on the committed run's target
    workload and compare them with results/runs/latency/cpu.json within both runs' spread,
    with both runs' conditions side by side; fails on drift, or as inconclusive when either
    run is flagged (experiments/check.py)."""
    _install(session, "dev")
    session.run("python", "-m", "experiments.check", *session.posargs)


@nox.session(python=PYTHON)
def gpu(session: nox.Session) -> None:
    """The GPU suite on one GPU (3.3-8b shapes, bf16): environment check, then latency,
    throughput, first request, decode profile and ablations, beam search, each part's run file
    as soon as it is done -> results/runs/<experiment>/gpu_8b.json. Arguments go to
    `python -m experiments.gpu_suite`, e.g. `nox -s gpu -- --parts latency profile`. An offline
    machine: experiments/README.md."""
    _install(session, "dev")
    session.run("python", "-m", "experiments.gpu_suite", *session.posargs)


@nox.session(python=PYTHON, name="eval")
def eval_(session: nox.Session) -> None:
    """WER, CER, RTFx and tokens/s of `granite-fms eval`, eager and compiled, on the built-in
    `tiny` variant (random weights: the WER means nothing) -> results/runs/eval/cpu.json, and
    long-form speed -> results/runs/longform/. With arguments, `granite-fms eval` on them
    instead, e.g. `nox -s eval -- --model_path DIR --manifest test-clean.jsonl --output F`."""
    _install(session, "dev")
    if session.posargs:
        session.run("granite-fms", "eval", *session.posargs)
        return
    session.run(
        "granite-fms", "eval", "--variant", "tiny", "--device_type", "cpu",
        "--manifest", "tests/data/manifest.jsonl", "--output", "results/runs/eval/cpu.json",
    )  # fmt: skip
    session.run("python", "-m", "experiments.longform")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Render results/runs/ and the templates, build the site (--strict), check it in Chromium."""
    _install(session, "dev,docs")
    session.run("python", "-m", "tools.gen_docs")
    session.run("mkdocs", "build", "--strict")
    session.run("python", "-m", "tools.check_site")
