"""MkDocs hook: fill the "Results" and "API reference" nav sections from the generated pages.

tools/gen_docs.py writes docs/results/ (with nav.json: the result pages in order, from
experiments/report.py) and docs/reference/<module>.md for each module of granite_fms, so neither
list is typed by hand: a new experiment or module appears in the nav by itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from mkdocs.exceptions import PluginError


def _section(nav: list, name: str, pages: list) -> None:
    for i, item in enumerate(nav):
        if isinstance(item, dict) and name in item:
            nav[i] = {name: pages}
            return
    raise PluginError(f"mkdocs.yml nav has no {name!r} entry")


def on_config(config, **kwargs):
    docs = Path(config["docs_dir"])
    results, reference = docs / "results" / "nav.json", docs / "reference"
    for required in (results, reference / "index.md"):
        if not required.is_file():
            raise PluginError(f"{required} does not exist: run `python -m tools.gen_docs` first")
    nav = config["nav"] or []
    _section(nav, "Results", ["results/index.md", *json.loads(results.read_text())])
    modules = sorted(p for p in reference.glob("*.md") if p.name != "index.md")
    pages = [{"Overview": "reference/index.md"}] + [
        {p.stem: f"reference/{p.name}"} for p in modules
    ]
    _section(nav, "API reference", pages)
    return config
