"""The GPU suite: the site's GPU rows from this tree, in parts that each run alone -> run files.

    python -m experiments.gpu_suite                            # every part: a GPU, 3.3-8b, bf16
    python -m experiments.gpu_suite --parts latency profile    # some parts
    python -m experiments.gpu_suite --quick --device cpu --dtype bfloat16    # the smoke run
    nox -s gpu -- --parts throughput

First the environment: torch and its CUDA build, the GPU, its free memory against what the
model needs, and every package the parts import, with its version against pyproject.toml's
lower bound and constraints.txt's pin; what is missing is printed, and the suite stops there
unless `--force`. Then the parts in order, each the `main()` of an experiment script called
with `--device --dtype --model --out` (and `--quick`), so each writes its own run file, with its
provenance, as soon as it is done; `<out>/gpu_suite/<scope>.json` (the environment, each part's
state, seconds and run file) is rewritten after every part, so a run cut short keeps what was
done. A part that fails is recorded and the next one runs.

Time: a part starts only if its budget (the most it should take at 3.3-8b on one H100/H200: a
plan from the compile times seen there, about 3 minutes per compiled shape set, not a
measurement) fits in what is left of `--budget-s` (default 480 on a GPU, none with --quick);
the others are recorded as skipped, to be run alone with `--parts`. Each part's measured
seconds are in the suite's file.
"""

from __future__ import annotations

import gc
import importlib
import importlib.metadata
import json
import sys
import time
import tomllib
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments import harness
from experiments.models import MODELS, model_note


@dataclass(frozen=True)
class Part:
    module: str  # experiments.<module>.main(argv)
    args: tuple[str, ...]  # its own arguments, besides --device --dtype --model --out --quick
    what: str
    budget_s: int  # planned seconds at 3.3-8b on one H100/H200 (not a measurement)
    sizes: tuple[str, ...] = ()  # the workload arguments, left to the script's own with --quick


PARTS = {
    "latency": Part(
        "latency", (), "10 s, batch 1: every mode, stages, floor", 420, ("--workloads", "10x1")
    ),
    "throughput": Part(
        "bench_throughput", (), "RTFx at batches 1, 8, 32", 480, ("--batches", "1", "8", "32")
    ),
    "first_request": Part(
        "compile_cost",
        ("--parts", "warm", "--configs", "symbolic"),
        "cold and warm first request (fresh processes, the compile artifact)",
        420,
    ),
    "profile": Part(
        "profile_regions", (), "decode step: top kernels, LoRA's share, gaps, the floor", 300
    ),
    "lora_merge": Part("ablate_lora_merge", (), "decode step, LoRA unmerged vs merged", 240),
    "inductor": Part(
        "ablate_inductor", (), "decode step, coordinate-descent tuning, max-autotune", 420
    ),
    "int8": Part("bench_int8", (), "int8 weight-only LLM", 300),
    "beam": Part("bench_beam", (), "beam search K=4 vs greedy", 240),
}
NOT_MEASURED = {
    "fp8_weight_only": "no fp8 weight-only kernel on this stack: torchao's Float8WeightOnlyConfig "
    "stores fp8 weights and runs the matmul in the activations' precision (its documentation), "
    "so it would measure a dequantisation, not an fp8 kernel; fp8 with fp8 activations "
    "(torch._scaled_mm) is not weight-only",
}
# Distributions the parts import (the package's dependencies and peft, which builds the LoRA;
# not jiwer: only `granite-fms eval` scores), and the modules whose import must work.
PACKAGES = ("torch", "torchaudio", "ibm-fms", "transformers", "peft", "torchao", "safetensors")
PACKAGES += ("soundfile", "numpy", "tqdm", "packaging")
IMPORTS = ("granite_fms", "transformers.models.granite_speech", "peft", "torchao", "soundfile")


# ----- the environment ---------------------------------------------------------------------


def lower_bounds() -> dict[str, str]:
    """`name>=version` of pyproject.toml's dependencies and dev extras."""
    project = tomllib.loads((harness.REPO / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    out = {}
    for spec in specs:
        name, _, rest = spec.partition(">=")
        if rest:
            out[name.strip().lower()] = rest.split(",")[0].strip()
    return out


def packages() -> list[dict]:
    """Each package: installed version (None: missing), lower bound, pin, and a problem."""
    from packaging.version import Version

    bounds, pins = lower_bounds(), harness.pins()
    rows = []
    for name in PACKAGES:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            version = None
        low, problem = bounds.get(name), None
        if version is None:
            problem = "missing"
        elif low and Version(version) < Version(low):
            problem = f"older than pyproject.toml's {low}"
        rows.append(dict(package=name, installed=version, minimum=low, pinned=pins.get(name)))
        rows[-1]["problem"] = problem
    return rows


def weights_gb(model: str, dtype: torch.dtype) -> float:
    """The model's parameters in GB at `dtype` (from its configuration, nothing built)."""
    from granite_fms.models.granite_speech import GraniteSpeech
    from granite_fms.testing import variant_config

    with torch.device("meta"):
        count = sum(p.numel() for p in GraniteSpeech(variant_config(model)).parameters())
    return count * torch.finfo(dtype).bits / 8 / 1e9


def environment(device: torch.device, model: str, dtype: torch.dtype) -> dict:
    """What the suite runs with, and `problems`: what stops it."""
    env = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "packages": packages(),
    }
    problems = [f"{p['package']}: {p['problem']}" for p in env["packages"] if p["problem"]]
    for module in IMPORTS:  # a package can be there and still fail, e.g. on an old dependency
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001  (any import failure stops the suite)
            problems.append(f"import {module}: {type(exc).__name__}: {exc}")
    # The HF and the FMS model both hold the weights; caches and activations come on top.
    env["model_weights_gb"] = weights_gb(model, dtype)
    needed = 2.5 * env["model_weights_gb"]
    if harness.gpu_only(device):
        if not torch.cuda.is_available():
            problems.append("--device cuda, but torch sees no GPU (a CPU build of torch?)")
        else:
            free, total = torch.cuda.mem_get_info(device)
            major, minor = torch.cuda.get_device_capability(device)
            env["gpu"] = dict(
                name=torch.cuda.get_device_name(device), capability=f"{major}.{minor}"
            )
            env["gpu"].update(free_gb=free / 1e9, total_gb=total / 1e9)
            if free / 1e9 < needed:
                problems.append(f"GPU memory: {free / 1e9:.1f} GB free, about {needed:.0f} needed")
    env["problems"] = problems
    return env


def print_environment(env: dict) -> None:
    print(f"python {env['python']}, torch {env['torch']} (CUDA {env['torch_cuda']})")
    if "gpu" in env:
        g = env["gpu"]
        memory = f"{g['free_gb']:.1f} of {g['total_gb']:.1f} GB free"
        print(f"GPU {g['name']} (sm {g['capability']}): {memory}")
    print(f"model weights {env['model_weights_gb']:.1f} GB")
    for p in env["packages"]:
        pin = f", pinned {p['pinned']}" if p["pinned"] and p["pinned"] != p["installed"] else ""
        have, low = p["installed"] or "-", p["minimum"] or "-"
        print(f"  {p['package']:<13} {have:<16} >= {low}{pin}: {p['problem'] or 'ok'}")
    for problem in env["problems"]:
        print(f"MISSING: {problem}")


# ----- the parts ---------------------------------------------------------------------------


def part_argv(part: Part, args) -> list[str]:
    argv = [*part.args, *([] if args.quick else part.sizes)]
    argv += ["--device", str(harness.device_of(args)), "--model", args.model]
    argv += ["--dtype", harness.dtype_name(harness.dtype_of(args)), "--out", str(args.out)]
    for flag, value in (("--quick", args.quick), ("--threads", args.threads)):
        argv += [flag] if value is True else [flag, str(value)] if value else []
    if args.compile_cache:
        argv += ["--compile-cache", str(args.compile_cache)]
    return argv


def run_part(name: str, part: Part, args) -> dict:
    """One experiment's main(); its run file, seconds and state ("done", "failed: ...")."""
    argv = part_argv(part, args)
    print(f"gpu_suite: {name}: python -m experiments.{part.module} {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    try:
        code = importlib.import_module(f"experiments.{part.module}").main(argv)
        state = "done" if code == 0 else f"failed: exit code {code}"
    except Exception as exc:  # noqa: BLE001  (the suite goes on; the error is its finding)
        traceback.print_exc()
        state = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
    finally:  # the next part starts clean: no graphs, no cached GPU blocks
        torch._dynamo.reset()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    scope = harness.scope_of(harness.device_of(args), args.model)
    run_file = Path(args.out) / part.module / f"{scope}.json"
    return {
        "part": name,
        "what": part.what,
        "command": f"python -m experiments.{part.module} {' '.join(argv)}",
        "state": state,
        "seconds": round(time.perf_counter() - start, 1),
        "budget_s": part.budget_s,
        "run_file": str(run_file) if run_file.is_file() else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = harness.parser(__doc__)
    parser.add_argument("--model", choices=MODELS, help="default 3.3-8b; tiny with --quick")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--budget-s", type=float, help="default 480; none with --quick")
    parser.add_argument("--force", action="store_true", help="run despite a missing package")
    args = parser.parse_args(argv)
    args.model = args.model or ("tiny" if args.quick else "3.3-8b")
    args.out = args.out or (harness.SCRATCH if args.quick else harness.RESULTS)
    budget = args.budget_s if args.budget_s is not None else None if args.quick else 480.0
    device, dtype = harness.device_of(args), harness.dtype_of(args)
    scope = harness.scope_of(device, args.model)
    run = harness.Run("gpu_suite", scope, args, model=model_note(args.model, dtype))
    run.replace_clean = True  # each write replaces the one before: the same run, more parts
    env = environment(device, args.model, dtype)
    print_environment(env)
    parts: list[dict] = []

    def write() -> None:
        run.write(
            what="the GPU suite's parts: state, seconds and run file of each",
            environment=env,
            rows=parts,
            not_measured=NOT_MEASURED,
            budget_s=budget,
        )

    if env["problems"] and not args.force:
        print("gpu_suite: stopped before any part (--force runs anyway)")
        write()
        return 2
    start = time.perf_counter()
    for name in args.parts:
        part, left = PARTS[name], None if budget is None else budget - (time.perf_counter() - start)
        if left is not None and part.budget_s > left:
            state = f"skipped: needs about {part.budget_s} s, {left:.0f} s left of --budget-s"
            parts.append(
                {"part": name, "what": part.what, "state": state, "budget_s": part.budget_s}
            )
        else:
            parts.append(run_part(name, part, args))
        print(f"gpu_suite: {name}: {parts[-1]['state']}", flush=True)
        write()
    failed = [p["part"] for p in parts if p["state"].startswith("failed")]
    print(json.dumps({p["part"]: p["state"] for p in parts}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
