"""Compile cost: regional vs whole-region compilation, and warm starts from a compile cache.

    python -m experiments.compile_cost [--quick]

1. Regional vs whole regions, on the built-in default (`Generator(regional=True)` vs the
   default), and on the real 3.3 encoder shapes (16 conformer blocks of width 1024, the
   projector, random weights, fp32; --quick: 4 blocks): the first call (cold: fresh Dynamo
   state and an empty Inductor cache, so it includes the compile) and the steady state
   (median of calls timed round robin), on a 10 s clip.
2. Warm starts: the same script twice in fresh processes (`--child`) sharing one
   `cache_dir`: first-request latency and whole-process time, cold (empty cache) then warm,
   and whether the two processes produced the same tokens.
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


def _fresh_cache(tmp: Path, name: str) -> None:
    """An empty Inductor cache for what compiles next. Dynamo's state is reset once per part
    only: a reset between the variants would drop the first one's graphs (whole regions and
    regional blocks are different code objects, so neither reuses the other's)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / name)


def _tiny(tmp: Path):
    import granite_fms
    from granite_fms.testing import save_variant_checkpoint

    save_variant_checkpoint(tmp / "tiny")
    return granite_fms.load_model(tmp / "tiny")


def _request(fm):
    from experiments.modes import fms_inputs, make_workload

    feats, rows, _, _ = fms_inputs(fm, make_workload(fm, AUDIO_S, 1, NEW_TOKENS))
    return rows, feats


def regional_vs_whole_tiny(tmp: Path, reps) -> dict:
    from granite_fms.inference.generation import Generator

    fm = _tiny(tmp)
    rows, feats = _request(fm)
    torch._dynamo.reset()
    gens, first, tokens = {}, {}, {}
    for name, regional in (("whole", False), ("regional", True)):
        _fresh_cache(tmp, f"tiny_{name}")
        gens[name] = Generator(copy.deepcopy(fm) if regional else fm, regional=regional)
        start = time.perf_counter()
        tokens[name] = [
            g.tokens for g in gens[name].generate(rows, feats, max_new_tokens=NEW_TOKENS)
        ]
        first[name] = time.perf_counter() - start
    tasks = {
        name: harness.Task(lambda g=g: g.generate(rows, feats, max_new_tokens=NEW_TOKENS), reps)
        for name, g in gens.items()
    }
    steady = harness.round_robin(tasks, torch.device("cpu"), warm_up=False)
    return {
        "first_s": first,
        "steady": steady,
        "same_tokens": tokens["whole"] == tokens["regional"],
    }


def regional_vs_whole_encoder(tmp: Path, reps, layers: int) -> dict:
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
    frames = 800  # a 10 s clip (500 encoder frames) padded to its bucket
    x = torch.randn(1, frames, 160)
    mask = torch.zeros(1, frames, dtype=torch.bool)
    mask[:, : AUDIO_S * 50] = True

    def path(enc):
        return lambda: projector(enc(x, mask))

    torch._dynamo.reset()
    calls, first, outs = {}, {}, {}
    for name in ("whole", "regional"):
        _fresh_cache(tmp, f"enc_{name}")
        if name == "whole":
            calls[name] = torch.compile(path(encoder), fullgraph=True, dynamic=False)
        else:
            regional = copy.deepcopy(encoder)
            for block in regional.layers:
                block.compile(fullgraph=True, dynamic=False)
            calls[name] = path(regional)
        start = time.perf_counter()
        outs[name] = calls[name]()
        first[name] = time.perf_counter() - start
    tasks = {name: harness.Task(fn, reps) for name, fn in calls.items()}
    steady = harness.round_robin(tasks, torch.device("cpu"), warm_up=False)
    err = float((outs["whole"] - outs["regional"]).abs().max() / outs["whole"].abs().max())
    return {"first_s": first, "steady": steady, "layers": layers, "rel_err": err}


def child(cache_dir: str) -> None:
    """One fresh process: build, compile with the cache, first request; prints JSON."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        from granite_fms.inference.generation import Generator

        torch.set_grad_enabled(False)
        fm = _tiny(Path(tmp))
        rows, feats = _request(fm)
        gen = Generator(fm, cache_dir=cache_dir)
        t0 = time.perf_counter()
        tokens = [g.tokens for g in gen.generate(rows, feats, max_new_tokens=NEW_TOKENS)]
        first = time.perf_counter() - t0
    print(
        json.dumps({"first_s": first, "process_s": time.perf_counter() - start, "tokens": tokens})
    )


def warm_starts(tmp: Path) -> dict:
    cmd = [sys.executable, "-m", "experiments.compile_cost", "--child", str(tmp / "cache")]
    runs = {}
    for name in ("cold", "warm"):
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=harness.REPO)
        runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
        runs[name]["wall_s"] = time.perf_counter() - t0
    return runs


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child(argv[1])
        return 0
    args = harness.parser(__doc__).parse_args(argv)
    run = harness.Run(
        "compile_cost",
        "cpu",
        args,
        model="tiny (built-in default) and the real 3.3 encoder shapes, random weights, fp32",
    )
    torch.set_grad_enabled(False)
    reps = (2, 3, 1.0) if args.quick else (3, 10, 3.0)
    with tempfile.TemporaryDirectory(prefix="compile_cost-") as tmp:
        tmp = Path(tmp)
        tiny = regional_vs_whole_tiny(tmp, reps)
        enc = regional_vs_whole_encoder(tmp, reps, 4 if args.quick else 16)
        warm = warm_starts(tmp)
    ev = {}
    for key, r in (("tiny", tiny), ("encoder", enc)):
        for name in ("whole", "regional"):
            ev[f"{key}_first_s_{name}"] = r["first_s"][name]
            ev[f"{key}_steady_ms_{name}"] = r["steady"][name]["median_ms"]
        ev[f"{key}_cold_compile_speedup"] = r["first_s"]["whole"] / r["first_s"]["regional"]
        ev[f"{key}_steady_regional_over_whole"] = (
            r["steady"]["regional"]["median_ms"] / r["steady"]["whole"]["median_ms"]
        )
    ev.update(
        encoder_layers=enc["layers"],
        encoder_regional_rel_err=enc["rel_err"],
        tiny_regional_same_tokens=tiny["same_tokens"],
        warm_first_s=warm["warm"]["first_s"],
        cold_first_s=warm["cold"]["first_s"],
        warm_over_cold_first=warm["warm"]["first_s"] / warm["cold"]["first_s"],
        warm_process_s=warm["warm"]["process_s"],
        cold_process_s=warm["cold"]["process_s"],
        warm_same_tokens=warm["warm"]["tokens"] == warm["cold"]["tokens"],
    )
    rows = [
        {"variant": f"{key} {name}", "first_call_s": r["first_s"][name], **r["steady"][name]}
        for key, r in (("tiny", tiny), ("encoder", enc))
        for name in ("whole", "regional")
    ]
    run.write(
        what=f"cold compile and steady state, {AUDIO_S} s clip, batch 1, {NEW_TOKENS} new tokens",
        rows=rows,
        evidence=ev,
        headline=[
            "encoder_cold_compile_speedup",
            "tiny_cold_compile_speedup",
            "warm_over_cold_first",
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
