"""Documentation tools: `python -m tools.gen_docs`, `tools.weekly`, `tools.check_site`."""
