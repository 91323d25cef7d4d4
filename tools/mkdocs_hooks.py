"""MkDocs hook: fill the "API reference" nav section from the pages gen_docs.py wrote.

tools/gen_docs.py writes docs/reference/<module>.md for each module of granite_fms that exists,
so the module list is never typed by hand; this hook puts those pages into the nav, index first.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.exceptions import PluginError

SECTION = "API reference"
REFERENCE_DIR = "reference"


def on_config(config, **kwargs):
    reference = Path(config["docs_dir"]) / REFERENCE_DIR
    index = reference / "index.md"
    if not index.is_file():
        raise PluginError(
            f"{index} does not exist: run `python tools/gen_docs.py` before `mkdocs build`"
        )
    pages = [{"Overview": f"{REFERENCE_DIR}/index.md"}]
    for page in sorted(reference.glob("*.md")):
        if page.name != "index.md":
            pages.append({page.stem: f"{REFERENCE_DIR}/{page.name}"})
    nav = config["nav"] or []
    for i, item in enumerate(nav):
        if isinstance(item, dict) and SECTION in item:
            nav[i] = {SECTION: pages}
            break
    else:
        raise PluginError(f"mkdocs.yml nav has no {SECTION!r} entry for the module pages")
    return config
