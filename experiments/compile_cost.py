"""Compile cost: regional vs whole-region compilation, and warm starts from a compile cache.

    python -m experiments.compile_cost [--quick]

    python -m experiments.compile_cost --parts warm --device cuda --model 3.3-8b

1. `regional`: regional vs whole regions on `--model` (`Generator(regional=True)` vs the
   default), and `encoder`: the same on the real 3.3 encoder shapes (16 conformer blocks of
   width 1024, the projector, random weights; --quick: 2 blocks): the first call (cold: fresh
   Dynamo state and an empty Inductor cache, so it includes the compile) and the steady state
   (median of calls timed round robin), on a 10 s clip.
2. `warm`: the first request in fresh processes (`--child`) sharing one `cache_dir`:
   first-request latency and whole-process time, cold (empty cache) then warm, and whether
   the two processes produced the same tokens.

All in `--dtype` on `--device` (defaults: fp32 on a CPU, bf16 on a GPU).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from experiments import harness
from experiments.models import MODELS, model_note

AUDIO_S, NEW_TOKENS = 10, 16
PARTS = ("regional", "encoder", "warm")


def _fresh_cache(args, tmp: Path, name: str) -> None:
    """An empty Inductor cache for what compiles next (unless --compile-cache shares one).
    Dynamo's state is reset once per part only: a reset between the variants would drop the
    first one's graphs (whole regions and regional blocks are different code objects, so
    neither reuses the other's)."""
    harness.compile_cache(args, tmp / name)


def _model(name: str, device: torch.device, dtype: torch.dtype, tmp: Path):
    """The FMS model of `name` (experiments/models.py)."""
    from experiments.models import build_models

    return build_models(name, device, dtype, tmp)[1]


def _request(fm):
    from experiments.modes import fms_inputs, make_workload

    feats, rows, _, _ = fms_inputs(fm, make_workload(fm, AUDIO_S, 1, NEW_TOKENS))
    return rows, feats


def regional_vs_whole_model(args, fm, tmp: Path, reps) -> dict:
    from granite_fms.inference.generation import Generator

    device = fm.language_model.base_model.embedding.weight.device
    rows, feats = _request(fm)
    torch._dynamo.reset()
    gens, first, tokens = {}, {}, {}
    for name, regional in (("whole", False), ("regional", True)):
        _fresh_cache(args, tmp, f"model_{name}")
        gens[name] = Generator(copy.deepcopy(fm) if regional else fm, regional=regional)
        start = time.perf_counter()
        tokens[name] = [
            g.tokens for g in gens[name].generate(rows, feats, max_new_tokens=NEW_TOKENS)
        ]
        harness.sync(device)
        first[name] = time.perf_counter() - start
    tasks = {
        name: harness.Task(lambda g=g: g.generate(rows, feats, max_new_tokens=NEW_TOKENS), reps)
        for name, g in gens.items()
    }
    steady = harness.round_robin(tasks, device, warm_up=False)
    return {
        "first_s": first,
        "steady": steady,
        "same_tokens": tokens["whole"] == tokens["regional"],
    }


def regional_vs_whole_encoder(args, tmp: Path, reps, layers: int, device, dtype) -> dict:
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
    encoder, projector = encoder.to(device, dtype), projector.to(device, dtype)
    frames = 800  # a 10 s clip (500 encoder frames) padded to its bucket
    x = torch.randn(1, frames, 160).to(device, dtype)
    mask = torch.zeros(1, frames, dtype=torch.bool, device=device)
    mask[:, : AUDIO_S * 50] = True

    def path(enc):
        return lambda: projector(enc(x, mask))

    torch._dynamo.reset()
    calls, first, outs = {}, {}, {}
    for name in ("whole", "regional"):
        _fresh_cache(args, tmp, f"enc_{name}")
        if name == "whole":
            calls[name] = torch.compile(path(encoder), fullgraph=True, dynamic=False)
        else:
            regional = copy.deepcopy(encoder)
            for block in regional.layers:
                block.compile(fullgraph=True, dynamic=False)
            calls[name] = path(regional)
        first[name], outs[name] = harness.timed_result(calls[name], device)
    tasks = {name: harness.Task(fn, reps) for name, fn in calls.items()}
    steady = harness.round_robin(tasks, device, warm_up=False)
    whole, regional = outs["whole"].float(), outs["regional"].float()
    err = float((whole - regional).abs().max() / whole.abs().max())
    return {"first_s": first, "steady": steady, "layers": layers, "rel_err": err}


def child(cache_dir: str, model: str, device: str, dtype: str) -> None:
    """One fresh process: build, compile with the cache, first request; prints JSON."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        from granite_fms.inference.generation import Generator

        torch.set_grad_enabled(False)
        fm = _model(model, torch.device(device), harness.DTYPES[dtype], Path(tmp))
        rows, feats = _request(fm)
        gen = Generator(fm, cache_dir=cache_dir)
        t0 = time.perf_counter()
        tokens = [g.tokens for g in gen.generate(rows, feats, max_new_tokens=NEW_TOKENS)]
        harness.sync(gen.device)
        first = time.perf_counter() - t0
    print(
        json.dumps({"first_s": first, "process_s": time.perf_counter() - start, "tokens": tokens})
    )


def warm_starts(tmp: Path, model: str, device: torch.device, dtype: torch.dtype) -> dict:
    cmd = [sys.executable, "-m", "experiments.compile_cost", "--child", str(tmp / "cache")]
    cmd += [model, str(device), harness.dtype_name(dtype)]
    runs = {}
    for name in ("cold", "warm"):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=harness.REPO)
        runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
        runs[name]["wall_s"] = time.perf_counter() - t0
    return runs


def evidence_of(parts: dict) -> dict:
    """Per compared part (the model's short name, e.g. `tiny`, and `encoder`): K_first_s_V,
    K_steady_ms_V, K_cold_compile_speedup, ...; the warm start's values without prefix."""
    ev = {}
    for key, r in parts.items():
        if key == "warm":
            continue
        for name in ("whole", "regional"):
            ev[f"{key}_first_s_{name}"] = r["first_s"][name]
            ev[f"{key}_steady_ms_{name}"] = r["steady"][name]["median_ms"]
        ev[f"{key}_cold_compile_speedup"] = r["first_s"]["whole"] / r["first_s"]["regional"]
        ev[f"{key}_steady_regional_over_whole"] = (
            r["steady"]["regional"]["median_ms"] / r["steady"]["whole"]["median_ms"]
        )
        if "same_tokens" in r:
            ev[f"{key}_regional_same_tokens"] = r["same_tokens"]
    if "encoder" in parts:
        ev["encoder_layers"] = parts["encoder"]["layers"]
        ev["encoder_regional_rel_err"] = parts["encoder"]["rel_err"]
    if "warm" in parts:
        warm = parts["warm"]
        ev.update(
            warm_first_s=warm["warm"]["first_s"],
            cold_first_s=warm["cold"]["first_s"],
            warm_over_cold_first=warm["warm"]["first_s"] / warm["cold"]["first_s"],
            warm_process_s=warm["warm"]["process_s"],
            cold_process_s=warm["cold"]["process_s"],
            warm_same_tokens=warm["warm"]["tokens"] == warm["cold"]["tokens"],
        )
    return ev


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(*argv[1:])
        return 0
    parser = harness.parser(__doc__)
    parser.add_argument("--model", default="tiny", choices=MODELS)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args(argv)
    device, dtype = harness.device_of(args), harness.dtype_of(args)
    what = model_note(args.model, dtype)
    if "encoder" in args.parts:
        what += " and the real 3.3 encoder shapes (random weights)"
    run = harness.Run("compile_cost", harness.scope_of(device, args.model), args, model=what)
    torch.set_grad_enabled(False)
    reps = (1, 2, 0.5) if args.quick else (3, 10, 3.0)
    parts, short = {}, args.model.removeprefix("3.3-")
    with tempfile.TemporaryDirectory(prefix="compile_cost-") as tmp:
        tmp = Path(tmp)
        if "regional" in args.parts:
            fm = _model(args.model, device, dtype, tmp)
            parts[short] = regional_vs_whole_model(args, fm, tmp, reps)
            del fm
        if "encoder" in args.parts:
            layers = 2 if args.quick else 16
            parts["encoder"] = regional_vs_whole_encoder(args, tmp, reps, layers, device, dtype)
        if "warm" in args.parts:
            parts["warm"] = warm_starts(tmp, args.model, device, dtype)
    rows = [
        {"variant": f"{key} {name}", "first_call_s": r["first_s"][name], **r["steady"][name]}
        for key, r in parts.items()
        if key != "warm"
        for name in ("whole", "regional")
    ]
    rows += [
        {"variant": f"{name} start", **{k: v for k, v in r.items() if k != "tokens"}}
        for name, r in parts.get("warm", {}).items()
    ]
    headline = ["encoder_cold_compile_speedup", f"{short}_cold_compile_speedup"]
    headline.append("warm_over_cold_first")
    ev = evidence_of(parts)
    run.write(
        what=f"cold compile and steady state, {AUDIO_S} s clip, batch 1, {NEW_TOKENS} new tokens",
        parts=args.parts,
        rows=rows,
        evidence=ev,
        headline=[k for k in headline if k in ev],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
