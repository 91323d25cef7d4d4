"""Reproduce everything: `nox -s bench parity eval docs` (main job) and `nox -s tests`."""

from __future__ import annotations

import nox

nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

PYTHON = "3.11"


def _install(session: nox.Session, extras: str) -> None:
    session.install("-e", f".[{extras}]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit, parity and compile tests on CPU (tiny checkpoints built with HF's own classes)."""
    _install(session, "dev")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "experiments", "tools", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "experiments", "tools", "noxfile.py")


@nox.session(python=PYTHON)
def parity(session: nox.Session) -> None:
    """FMS vs HF parity per stage, dtype and config; writes results/parity.{json,md}."""
    _install(session, "dev")
    session.run("python", "experiments/parity.py", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Graph-break census and latency benchmark -> results/{census,latency}.{json,md}, plots."""
    _install(session, "dev,docs")
    session.run("python", "experiments/census.py", *session.posargs)
    session.run("python", "experiments/latency.py", *session.posargs)


@nox.session(python=PYTHON, name="eval")
def eval_(session: nox.Session) -> None:
    """WER, CER, RTFx and tokens/s, eager and compiled, -> results/eval.{json,md}, and long-form
    speed -> results/longform.{json,md}, on the built-in `tiny` variant (random weights: the WER
    means nothing). With arguments, `granite-fms eval` on them instead, e.g.
    `nox -s eval -- --model_path DIR --manifest test-clean.jsonl --output results/eval.json`."""
    _install(session, "dev")
    if session.posargs:
        session.run("granite-fms", "eval", *session.posargs)
        return
    session.run(
        "granite-fms", "eval", "--variant", "tiny", "--device_type", "cpu",
        "--manifest", "tests/data/manifest.jsonl", "--output", "results/eval.json",
    )  # fmt: skip
    session.run("python", "experiments/longform.py")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Regenerate pages from results/, build the site (--strict), check it in Chromium."""
    _install(session, "dev,docs")
    session.run("python", "tools/gen_docs.py")
    session.run("mkdocs", "build", "--strict")
    session.run("python", "tools/check_site.py")
