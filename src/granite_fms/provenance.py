"""Where and with what a result was produced: hardware, library versions, git state, time.

The git state is the source checkout's this module was imported from (an editable install or
`PYTHONPATH=src`): the commit, the changed paths and a hash of the diff against it, so a result
from uncommitted code still names the code. No hostname, user name or path is recorded.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("granite-fms", "torch", "torchaudio", "transformers", "ibm-fms", "peft", "jiwer")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    if not (REPO / ".git").exists():  # an installed copy: no checkout to describe
        return None
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout


def provenance() -> dict:
    """A JSON-serialisable description of the machine, software and repository state."""
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = {
            "name": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
        }
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain")
    dirty_paths = [line[3:] for line in status.splitlines()] if status is not None else None
    diff = _git("diff", "HEAD", "--binary")
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": {
            "cpu": _cpu_model(),
            "machine": platform.machine(),
            "gpu": gpu,
            "cpu_count": os.cpu_count(),
            "cpu_affinity": affinity,
            "torch_threads": torch.get_num_threads(),
        },
        "os": platform.platform(terse=True),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": {name: _version(name) for name in PACKAGES},
        "torch_cuda": torch.version.cuda,
        "cuda_runtime_available": torch.cuda.is_available(),
        "git": {
            "commit": commit.strip() if commit else None,
            "dirty": bool(dirty_paths) if dirty_paths is not None else None,
            "dirty_paths": dirty_paths,
            # tracked changes only; untracked files are listed in dirty_paths
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
        },
        "argv": [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else [],
    }


def one_line(p: dict) -> str:
    """A short human-readable summary for report headers."""
    dev = p["device"]
    gpu = dev["gpu"]["name"] if dev["gpu"] else "no GPU"
    v = p["versions"]
    git = p["git"]
    commit = (git["commit"] or "unknown")[:12] + (" (dirty)" if git["dirty"] else "")
    return (
        f"{p['date_utc']} · {dev['cpu']}, {dev['torch_threads']} torch threads, {gpu} · "
        f"Python {p['python']}, torch {v['torch']} (CUDA {p['torch_cuda']}), "
        f"torchaudio {v['torchaudio']}, transformers {v['transformers']}, "
        f"ibm-fms {v['ibm-fms']}, peft {v['peft']} · commit {commit}"
    )


if __name__ == "__main__":
    import json

    print(json.dumps(provenance(), indent=2))
