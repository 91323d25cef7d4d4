"""Compile cost: what the first request, each new batch size and a new process pay, with
static shapes, symbolic shapes and regional compilation, and what the steady state pays back.

    python -m experiments.compile_cost [--quick] [--threads 1]
    python -m experiments.compile_cost --parts warm --device cuda --model 3.3-8b

1. `model`: `--model` (the built-in default, tiny), 10 s clips, 16 new tokens, three
   `CompileConfig`s: static shapes (a graph per bucket), symbolic shapes (the default),
   symbolic and regional. Each on its own copy of the model with an empty Inductor cache: the
   first request at batch 1 (cold, compiles included), then one request at each new batch
   size (3, 8, 32), each with the seconds its compiles took (`Generator.compiles`, logged per
   graph); then the steady state at batch 1 and 8, all three timed round robin.
2. `encoder`: the real 3.3 encoder shapes (16 conformer blocks of width 1024 and the
   projector, random weights; --quick: 1 block) as one region, the same three
   configurations: the first call on a 10 s clip (cold), then a 20 s batch of 2 (new shapes),
   then the steady state on the 10 s clip, round robin.
3. `warm`: warm start, the same three configurations: a process compiles cold, runs the first
   request and saves the artifact (`SpeechPipeline.save_compiled`'s file); a fresh process with
   an empty Inductor cache loads it (`compile(cache=...)`) and runs the same request:
   first-request and process times, the regions whose Dynamo output loaded, the graphs Dynamo
   traced, Inductor's cache hits and misses, the same tokens or not.
   (Its processes ignore --compile-cache: each starts from an empty cache.)

All in `--dtype` on `--device` (defaults: fp32 on a CPU, bf16 on a GPU). --quick: batch sizes
(3,), steady state at batch 1, the symbolic and regional configurations (unless --configs).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from experiments import harness
from experiments.models import MODELS, build_models, model_note

AUDIO_S, NEW_TOKENS = 10, 16
CONFIGS = {  # name: CompileConfig fields
    "static": dict(symbolic=False),
    "symbolic": dict(),
    "regional": dict(regional=True),
}
PARTS = ("model", "encoder", "warm")


def _plan(args) -> tuple[dict, tuple[int, ...], tuple[int, ...]]:
    """(configurations, new batch sizes, steady-state batch sizes)."""
    names = args.configs or (("symbolic", "regional") if args.quick else tuple(CONFIGS))
    configs = {name: CONFIGS[name] for name in names}
    return (configs, (3,), (1,)) if args.quick else (configs, (3, 8, 32), (1, 8))


def _model(name: str, device: torch.device, dtype: torch.dtype, tmp: Path):
    """The FMS model of `name` (experiments/models.py)."""
    return build_models(name, device, dtype, tmp)[1]


def _request(fm, batch: int = 1):
    from experiments.modes import fms_inputs, make_workload

    feats, rows, _, _ = fms_inputs(fm, make_workload(fm, AUDIO_S, batch, NEW_TOKENS))
    return rows, feats


def _compile_seconds(gen) -> float:
    return sum(region.seconds for region in gen.regions.values())


def model_configs(args, fm, tmp: Path, reps) -> dict:
    """Part 1: per configuration, the first request, each new batch size, the steady state."""
    from granite_fms.inference.compile import CompileConfig
    from granite_fms.inference.generation import Generator

    configs, batches, steady_batches = _plan(args)
    device = fm.language_model.base_model.embedding.weight.device
    requests = {b: _request(fm, b) for b in (1, *batches)}
    out, gens, tokens = {}, {}, {}
    for name, fields in configs.items():
        harness.compile_cache(args, tmp / f"model_{name}")
        gen = gens[name] = Generator(copy.deepcopy(fm), compile=CompileConfig(**fields))
        r = out[name] = {}
        for batch, (rows, feats) in requests.items():
            before = _compile_seconds(gen)
            request_s, result = harness.timed_result(
                partial(gen.generate, rows, feats, max_new_tokens=NEW_TOKENS), device
            )
            r[f"request_s_b{batch}"] = request_s
            r[f"compile_s_b{batch}"] = _compile_seconds(gen) - before
            tokens.setdefault(batch, {})[name] = [g.tokens for g in result]
        r["graphs"] = sum(gen.compiles.values())
    tasks = {
        (name, b): harness.Task(
            lambda g=gen, r=requests[b]: g.generate(*r, max_new_tokens=NEW_TOKENS), reps
        )
        for name, gen in gens.items()
        for b in steady_batches
    }
    steady = harness.round_robin(tasks, device, warm_up=False)
    for (name, b), summary in steady.items():
        out[name][f"steady_ms_b{b}"] = summary["median_ms"]
        out[name][f"steady_b{b}"] = summary
    same = all(len({json.dumps(t) for t in by.values()}) == 1 for by in tokens.values())
    return {"configs": out, "same_tokens": same}


def _encoder(layers: int):
    from granite_fms.models.conformer import ConformerConfig, ConformerEncoder
    from granite_fms.models.qformer import QFormerConfig, QFormerProjector

    torch.manual_seed(0)
    encoder = ConformerEncoder(ConformerConfig(nlayers=layers)).eval()
    projector = QFormerProjector(QFormerConfig()).eval()
    projector.reset_parameters()  # its query tokens are allocated uninitialised
    for module in [*encoder.modules(), *projector.modules()]:
        if isinstance(module, torch.nn.Linear | torch.nn.Conv1d):  # HF's init (std 0.02):
            torch.nn.init.normal_(module.weight, std=0.02)  # PyTorch's default overflows
            if module.bias is not None:  # fp32 through 16 random blocks (NaN outputs)
                torch.nn.init.zeros_(module.bias)
    return encoder, projector


def _clips(seconds: float, batch: int, device: torch.device, dtype: torch.dtype):
    frames = round(seconds * 50)
    features = torch.randn(batch, frames, 160).to(device, dtype)
    return features, torch.ones(batch, frames, dtype=torch.bool, device=device)


def encoder_configs(args, tmp: Path, reps, layers: int) -> dict:
    """Part 2: the audio path at the real 3.3 encoder shapes as one region."""
    from granite_fms.inference.compile import CompileConfig, Region, compile_blocks

    device, dtype = harness.device_of(args), harness.dtype_of(args)
    encoder, projector = (m.to(device, dtype) for m in _encoder(layers))
    first, second = _clips(AUDIO_S, 1, device, dtype), _clips(2 * AUDIO_S, 2, device, dtype)
    configs = _plan(args)[0]
    out, calls, outs = {}, {}, {}
    for name, fields in configs.items():
        harness.compile_cache(args, tmp / f"enc_{name}")
        config = CompileConfig(**fields)
        enc = copy.deepcopy(encoder)
        if config.regional:
            compile_blocks(enc.layers, config, config.symbolic)
        dims = (lambda f, m: [(f, (0, 1)), (m, (0, 1))]) if config.symbolic else None
        region = Region(
            "encode",
            lambda f, m, e=enc: projector(e(f, m)),
            config,
            limit=64,
            dims=dims,
            compiled=not config.regional,
        )
        r = out[name] = {}
        for label, clips in (("first", first), ("new_shape", second)):
            before = region.seconds
            r[f"{label}_s"], outs[(name, label)] = harness.timed_result(
                lambda reg=region, c=clips: reg(*c), device
            )
            r[f"{label}_compile_s"] = region.seconds - before
        r["graphs"] = region.compiles
        calls[name] = lambda reg=region: reg(*first)
    steady = harness.round_robin(
        {name: harness.Task(fn, reps) for name, fn in calls.items()}, device
    )
    for name, summary in steady.items():
        out[name]["steady_ms"] = summary["median_ms"]
        out[name]["steady"] = summary
    ref = outs[(next(iter(configs)), "first")].float()
    err = max(
        float((outs[(n, "first")].float() - ref).abs().max() / ref.abs().max()) for n in configs
    )
    return {"configs": out, "layers": layers, "max_rel_err": err}


def child(role: str, config: str, tmp: str, model: str, device: str, dtype: str, threads: str):
    """Part 3, one fresh process: `save` compiles cold and writes the artifact, `load` loads
    it; both time the first request. Prints JSON."""
    start = time.perf_counter()
    from granite_fms.pipeline import SpeechPipeline

    torch.set_num_threads(int(threads))
    torch.set_grad_enabled(False)
    device = torch.device(device)
    fm = _model(model, device, harness.DTYPES[dtype], Path(tmp) / role)
    rows, feats = _request(fm)
    artifact = Path(tmp) / f"{config}.compiled"
    cache = artifact if role == "load" else None
    pipe = SpeechPipeline(fm).compile(cache=cache, **CONFIGS[config])
    first, result = harness.timed_result(
        lambda: pipe.generator.generate(rows, feats, max_new_tokens=NEW_TOKENS), device
    )
    tokens = [g.tokens for g in result]
    if role == "save":
        pipe.save_compiled(artifact)
    counters = torch._dynamo.utils.counters
    print(
        json.dumps(
            {
                "first_s": first,
                "process_s": time.perf_counter() - start,
                "tokens": tokens,
                "graphs": sum(pipe.generator.compiles.values()),
                "traced": counters["stats"]["unique_graphs"],
                "dynamo_loaded": counters["dynamo_cache"]["dynamo_cache_hit"],
                "inductor": {k: v for k, v in counters["inductor"].items() if "cache" in k},
                "aot_autograd": {k: v for k, v in counters["aot_autograd"].items()},
                "artifact_mb": artifact.stat().st_size / 2**20 if artifact.exists() else None,
            }
        )
    )


def warm_start(args, tmp: Path) -> dict:
    """Part 3 for each configuration, each process with this one's threads."""
    device, dtype = harness.device_of(args), harness.dtype_of(args)
    setup = [args.model, str(device), harness.dtype_name(dtype), str(torch.get_num_threads())]
    runs = {}
    for config in _plan(args)[0]:
        for role in ("save", "load"):
            cache = tmp / f"inductor_{config}_{role}"
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
            cmd = [sys.executable, "-m", "experiments.compile_cost", "--child", role, config]
            t0 = time.perf_counter()
            out = subprocess.run(
                [*cmd, str(tmp), *setup], check=True, capture_output=True, text=True, env=env
            )
            run = runs[(config, role)] = json.loads(out.stdout.strip().splitlines()[-1])
            run["wall_s"] = time.perf_counter() - t0
    return runs


def _ratios(part: str, runs: dict, key: str, first: str) -> dict:
    """Steady state and cold first call of symbolic and regional against static (when run)."""
    if "static" not in runs:
        return {}
    static = runs["static"]
    return {
        k: v
        for name in ("symbolic", "regional")
        for k, v in (
            (f"{part}_steady_{name}_over_static", runs[name][key] / static[key]),
            (f"{part}_cold_static_over_{name}", static[first] / runs[name][first]),
        )
    }


def evidence(short: str, parts: dict) -> dict:
    """Per part: `<model>_<value>_<config>` (e.g. tiny_request_s_b1_symbolic),
    `encoder_<value>_<config>`, and the warm start's `<value>_<config>`."""
    ev = {}
    if "model" in parts:
        configs = parts["model"]["configs"]
        for name, r in configs.items():
            ev.update({f"{short}_{k}_{name}": v for k, v in r.items() if not isinstance(v, dict)})
            news = [v for k, v in r.items() if k.startswith("compile_s_b") and k != "compile_s_b1"]
            ev[f"{short}_new_batch_compile_share_{name}"] = max(news) / r["compile_s_b1"]
        ev.update(_ratios(short, configs, "steady_ms_b1", "request_s_b1"))
        if "static" in configs and "steady_ms_b8" in configs["static"]:
            b8 = configs["symbolic"]["steady_ms_b8"] / configs["static"]["steady_ms_b8"]
            ev[f"{short}_steady_b8_symbolic_over_static"] = b8
        ev[f"{short}_same_tokens"] = parts["model"]["same_tokens"]
    if "encoder" in parts:
        enc = parts["encoder"]
        for name, r in enc["configs"].items():
            ev.update({f"encoder_{k}_{name}": v for k, v in r.items() if not isinstance(v, dict)})
        ev.update(_ratios("encoder", enc["configs"], "steady_ms", "first_s"))
        ev.update(encoder_layers=enc["layers"], encoder_max_rel_err=enc["max_rel_err"])
    for (config, role), run in parts.get("warm", {}).items():
        if role == "save":
            continue
        cold = parts["warm"][(config, "save")]
        ev.update(
            {
                f"cold_first_s_{config}": cold["first_s"],
                f"warm_first_s_{config}": run["first_s"],
                f"warm_over_cold_first_{config}": run["first_s"] / cold["first_s"],
                f"cold_process_s_{config}": cold["process_s"],
                f"warm_process_s_{config}": run["process_s"],
                f"warm_same_tokens_{config}": run["tokens"] == cold["tokens"],
                f"warm_dynamo_loaded_{config}": run["dynamo_loaded"],
                f"warm_traced_graphs_{config}": run["traced"],
                f"warm_fxgraph_cache_miss_{config}": run["inductor"].get("fxgraph_cache_miss", 0),
                f"warm_fxgraph_cache_hit_{config}": run["inductor"].get("fxgraph_cache_hit", 0),
                f"artifact_mb_{config}": cold["artifact_mb"],
            }
        )
    return ev


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(*argv[1:8])
        return 0
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="tiny", choices=MODELS)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, help="default: all")
    args = parser.parse_args(argv)
    device, dtype = harness.device_of(args), harness.dtype_of(args)
    what = model_note(args.model, dtype)
    if "encoder" in args.parts:
        what += " and the real 3.3 encoder shapes (random weights)"
    run = harness.Run("compile_cost", harness.scope_of(device, args.model), args, model=what)
    torch.set_grad_enabled(False)
    torch.compile(lambda x: x * 2)(torch.ones(2))  # the one-time start-up of the compiler
    reps = (2, 3, 1.0) if args.quick else (5, 15, 4.0)
    steps = {"model": 400, "encoder": 500, "warm": 400}
    progress = harness.Progress("compile_cost", {p: steps[p] for p in args.parts})
    parts, short = {}, args.model.removeprefix("3.3-")
    with tempfile.TemporaryDirectory(prefix="compile_cost-") as tmp:
        tmp = Path(tmp)
        if "model" in args.parts:
            fm = _model(args.model, device, dtype, tmp / "model")
            parts["model"] = model_configs(args, fm, tmp, reps)
            del fm
            progress.done("model")
        if "encoder" in args.parts:
            parts["encoder"] = encoder_configs(args, tmp, reps, 1 if args.quick else 16)
            progress.done("encoder")
        if "warm" in args.parts:
            parts["warm"] = warm_start(args, tmp)
            progress.done("warm")
    rows = [
        {"part": part, "config": name, **{k: v for k, v in r.items() if not isinstance(v, dict)}}
        for part in ("model", "encoder")
        for name, r in parts.get(part, {}).get("configs", {}).items()
    ]
    rows += [
        {"part": "warm", "config": config, "process": role, **r}
        for (config, role), r in parts.get("warm", {}).items()
    ]
    ev = evidence(short, parts)
    headline = [
        "warm_over_cold_first_symbolic",
        "warm_over_cold_first_regional",
        f"{short}_new_batch_compile_share_symbolic",
        f"{short}_steady_symbolic_over_static",
    ]
    run.write(
        what=f"{AUDIO_S} s clips, {NEW_TOKENS} new tokens; cold = empty Inductor cache",
        rows=rows,
        evidence=ev,
        parts=args.parts,
        not_measured={}
        if harness.gpu_only(device)
        else {
            "gpu": "no GPU was lent to this work: the GPU targets (3.3-8b, bf16: cold first "
            "request, each further batch size, a warm process's first request, the decode "
            "step in CUDA graphs) are unmeasured"
        },
        headline=[k for k in headline if k in ev],
        steps_s=progress.seconds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
