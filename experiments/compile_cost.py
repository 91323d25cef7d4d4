"""Compile cost: what the first request, each new batch size and a new process pay, with
static shapes, symbolic shapes and regional compilation, and what the steady state pays back.

    python -m experiments.compile_cost [--quick] [--threads 1]

1. The built-in default (tiny), 10 s clips, 16 new tokens, three `CompileConfig`s: static
   shapes (a graph per bucket), symbolic shapes (the default), symbolic and regional. Each on
   its own copy of the model with an empty Inductor cache: the first request at batch 1 (cold,
   compiles included), then one request at each new batch size (3, 8, 32), each with the
   seconds its compiles took (`Generator.compiles`, logged per graph); then the steady state
   at batch 1 and 8, all three timed round robin.
2. The real 3.3 encoder shapes (16 conformer blocks of width 1024 and the projector, random
   weights, fp32; --quick: 4 blocks) as one region, the same three configurations: the first
   call on a 10 s clip (cold), then a 20 s batch of 2 (new shapes), then the steady state on
   the 10 s clip, round robin.
3. Warm start, the same three configurations: a process compiles cold, runs the first
   request and saves the artifact (`SpeechPipeline.save_compiled`'s file); a fresh process with
   an empty Inductor cache loads it (`compile(cache=...)`) and runs the same request:
   first-request and process times, Inductor's cache hits and misses, the same tokens or not.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from experiments import harness

AUDIO_S, NEW_TOKENS = 10, 16
CONFIGS = {  # name: CompileConfig fields
    "static": dict(symbolic=False),
    "symbolic": dict(),
    "regional": dict(regional=True),
}
BATCHES = (3, 8, 32)


def _fresh_cache(tmp: Path, name: str) -> None:
    """An empty Inductor cache for what compiles next (this process only)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / name)


def _tiny(tmp: Path):
    import granite_fms
    from granite_fms.testing import save_variant_checkpoint

    if not (tmp / "tiny").exists():
        save_variant_checkpoint(tmp / "tiny")
    return granite_fms.load_model(tmp / "tiny")


def _request(fm, batch: int = 1):
    from experiments.modes import fms_inputs, make_workload

    feats, rows, _, _ = fms_inputs(fm, make_workload(fm, AUDIO_S, batch, NEW_TOKENS))
    return rows, feats


def _compile_seconds(gen) -> float:
    return sum(region.seconds for region in gen.regions.values())


def tiny_configs(tmp: Path, reps) -> dict:
    """Part 1: per configuration, the first request, each new batch size, the steady state."""
    from granite_fms.inference.compile import CompileConfig
    from granite_fms.inference.generation import Generator

    fm = _tiny(tmp)
    requests = {b: _request(fm, b) for b in (1, *BATCHES)}
    out, gens, tokens = {}, {}, {}
    for name, fields in CONFIGS.items():
        _fresh_cache(tmp, f"tiny_{name}")
        gen = gens[name] = Generator(copy.deepcopy(fm), compile=CompileConfig(**fields))
        r = out[name] = {}
        for batch, (rows, feats) in requests.items():
            before, start = _compile_seconds(gen), time.perf_counter()
            result = gen.generate(rows, feats, max_new_tokens=NEW_TOKENS)
            r[f"request_s_b{batch}"] = time.perf_counter() - start
            r[f"compile_s_b{batch}"] = _compile_seconds(gen) - before
            tokens.setdefault(batch, {})[name] = [g.tokens for g in result]
        r["graphs"] = sum(gen.compiles.values())
    tasks = {
        (name, b): harness.Task(
            lambda g=gen, r=requests[b]: g.generate(*r, max_new_tokens=NEW_TOKENS), reps
        )
        for name, gen in gens.items()
        for b in (1, 8)
    }
    steady = harness.round_robin(tasks, torch.device("cpu"), warm_up=False)
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


def _clips(seconds: float, batch: int):
    frames = round(seconds * 50)
    return torch.randn(batch, frames, 160), torch.ones(batch, frames, dtype=torch.bool)


def encoder_configs(tmp: Path, reps, layers: int) -> dict:
    """Part 2: the audio path at the real 3.3 encoder shapes as one region."""
    from granite_fms.inference.compile import CompileConfig, Region, compile_blocks

    encoder, projector = _encoder(layers)
    first, second = _clips(AUDIO_S, 1), _clips(2 * AUDIO_S, 2)
    out, calls, outs = {}, {}, {}
    for name, fields in CONFIGS.items():
        _fresh_cache(tmp, f"enc_{name}")
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
        for label, args in (("first", first), ("new_shape", second)):
            before, start = region.seconds, time.perf_counter()
            outs[(name, label)] = region(*args)
            r[f"{label}_s"] = time.perf_counter() - start
            r[f"{label}_compile_s"] = region.seconds - before
        r["graphs"] = region.compiles
        calls[name] = lambda reg=region: reg(*first)
    steady = harness.round_robin(
        {name: harness.Task(fn, reps) for name, fn in calls.items()}, torch.device("cpu")
    )
    for name, summary in steady.items():
        out[name]["steady_ms"] = summary["median_ms"]
        out[name]["steady"] = summary
    ref = outs[("static", "first")]
    err = max(float((outs[(n, "first")] - ref).abs().max() / ref.abs().max()) for n in CONFIGS)
    return {"configs": out, "layers": layers, "max_rel_err": err}


def child(role: str, config: str, tmp: str) -> None:
    """Part 3, one fresh process: `save` compiles cold and writes the artifact, `load` loads
    it; both time the first request. Prints JSON."""
    start = time.perf_counter()
    from granite_fms.pipeline import SpeechPipeline

    if int(os.environ.get("COMPILE_COST_THREADS", "0")):
        torch.set_num_threads(int(os.environ["COMPILE_COST_THREADS"]))
    torch.set_grad_enabled(False)
    fm = _tiny(Path(tmp))
    rows, feats = _request(fm)
    artifact = Path(tmp) / f"{config}.compiled"
    cache = artifact if role == "load" else None
    pipe = SpeechPipeline(fm).compile(cache=cache, **CONFIGS[config])
    t0 = time.perf_counter()
    tokens = [g.tokens for g in pipe.generator.generate(rows, feats, max_new_tokens=NEW_TOKENS)]
    first = time.perf_counter() - t0
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
                "inductor": {k: v for k, v in counters["inductor"].items() if "cache" in k},
                "aot_autograd": {k: v for k, v in counters["aot_autograd"].items()},
                "artifact_mb": artifact.stat().st_size / 2**20 if artifact.exists() else None,
            }
        )
    )


def warm_start(tmp: Path, threads: int | None) -> dict:
    """Part 3 for each configuration."""
    runs = {}
    for config in CONFIGS:
        for role in ("save", "load"):
            cache = tmp / f"inductor_{config}_{role}"
            env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache))
            env["COMPILE_COST_THREADS"] = str(threads or 0)
            cmd = [sys.executable, "-m", "experiments.compile_cost", "--child", role, config]
            t0 = time.perf_counter()
            out = subprocess.run(
                [*cmd, str(tmp)], check=True, capture_output=True, text=True, env=env
            )
            run = runs[(config, role)] = json.loads(out.stdout.strip().splitlines()[-1])
            run["wall_s"] = time.perf_counter() - t0
    return runs


def evidence(tiny: dict, enc: dict, warm: dict) -> dict:
    ev = {}
    for name, r in tiny["configs"].items():
        ev.update({f"tiny_{k}_{name}": v for k, v in r.items() if not isinstance(v, dict)})
        first = r["compile_s_b1"]
        ev[f"tiny_new_batch_compile_share_{name}"] = (
            max(r[f"compile_s_b{b}"] for b in BATCHES) / first
        )
    for name, r in enc["configs"].items():
        ev.update({f"encoder_{k}_{name}": v for k, v in r.items() if not isinstance(v, dict)})
    for part, runs in (("tiny", tiny["configs"]), ("encoder", enc["configs"])):
        key = "steady_ms_b1" if part == "tiny" else "steady_ms"
        first = "request_s_b1" if part == "tiny" else "first_s"
        for name in ("symbolic", "regional"):
            ev[f"{part}_steady_{name}_over_static"] = runs[name][key] / runs["static"][key]
            ev[f"{part}_cold_static_over_{name}"] = runs["static"][first] / runs[name][first]
    ev["tiny_steady_b8_symbolic_over_static"] = (
        tiny["configs"]["symbolic"]["steady_ms_b8"] / tiny["configs"]["static"]["steady_ms_b8"]
    )
    ev.update(
        tiny_same_tokens=tiny["same_tokens"],
        encoder_layers=enc["layers"],
        encoder_max_rel_err=enc["max_rel_err"],
    )
    for config in CONFIGS:
        cold, warm_run = warm[(config, "save")], warm[(config, "load")]
        ev.update(
            {
                f"cold_first_s_{config}": cold["first_s"],
                f"warm_first_s_{config}": warm_run["first_s"],
                f"warm_over_cold_first_{config}": warm_run["first_s"] / cold["first_s"],
                f"cold_process_s_{config}": cold["process_s"],
                f"warm_process_s_{config}": warm_run["process_s"],
                f"warm_same_tokens_{config}": warm_run["tokens"] == cold["tokens"],
                f"warm_fxgraph_cache_miss_{config}": warm_run["inductor"].get(
                    "fxgraph_cache_miss", 0
                ),
                f"warm_fxgraph_cache_hit_{config}": warm_run["inductor"].get(
                    "fxgraph_cache_hit", 0
                ),
                f"artifact_mb_{config}": cold["artifact_mb"],
            }
        )
    return ev


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(*argv[1:4])
        return 0
    args = harness.parser(__doc__, device=False).parse_args(argv)
    run = harness.Run(
        "compile_cost",
        "cpu",
        args,
        model="tiny (built-in default) and the real 3.3 encoder shapes, random weights, fp32",
    )
    torch.set_grad_enabled(False)
    torch.compile(lambda x: x * 2)(torch.ones(2))  # the one-time start-up of the compiler
    reps = (2, 3, 1.0) if args.quick else (5, 15, 4.0)
    steps = {"tiny": 400, "encoder": 500, "warm_start": 400}
    progress = harness.Progress("compile_cost", steps)
    with tempfile.TemporaryDirectory(prefix="compile_cost-") as tmp:
        tmp = Path(tmp)
        tiny = tiny_configs(tmp, reps)
        progress.done("tiny")
        enc = encoder_configs(tmp, reps, 4 if args.quick else 16)
        progress.done("encoder")
        warm = warm_start(tmp, args.threads)
        progress.done("warm_start")
    rows = [
        {"part": part, "config": name, **{k: v for k, v in r.items() if not isinstance(v, dict)}}
        for part, configs in (("tiny", tiny["configs"]), ("encoder", enc["configs"]))
        for name, r in configs.items()
    ]
    rows += [
        {"part": "warm_start", "config": config, "process": role, **r}
        for (config, role), r in warm.items()
    ]
    run.write(
        what=f"{AUDIO_S} s clips, {NEW_TOKENS} new tokens; cold = empty Inductor cache",
        rows=rows,
        evidence=evidence(tiny, enc, warm),
        not_measured={
            "gpu": "no GPU was lent to this work: the GPU targets (3.3-8b, bf16: cold first "
            "request, each further batch size, a warm process's first request, the decode "
            "step in CUDA graphs) are unmeasured"
        },
        headline=[
            "warm_over_cold_first_symbolic",
            "warm_over_cold_first_regional",
            "tiny_new_batch_compile_share_symbolic",
            "tiny_steady_symbolic_over_static",
        ],
        steps_s=progress.seconds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
