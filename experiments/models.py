"""The models the experiments run, and the setup every ablation and profile script shares.

`tiny` is the built-in default variant, written as a checkpoint by transformers' own classes
(with a peft LoRA of the variant's rank) and loaded both ways; `3.3-2b` / `3.3-8b` are the
registered variants' shapes with transformers' random init, converted in memory. Both sides
always hold the same random weights.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from experiments import harness
from experiments.modes import Workload, make_workload

MODELS = ["tiny", "3.3-2b", "3.3-8b"]


def build_models(name: str, device: torch.device, dtype: torch.dtype, tmp: Path):
    """(transformers model, FMS model) with the same random weights, eval, no grad."""
    if name == "tiny":
        import granite_fms
        from granite_fms.testing import save_variant_checkpoint

        hf = save_variant_checkpoint(tmp / "tiny").to(device, dtype)
        fm = granite_fms.load_model(tmp / "tiny", dtype=dtype, device=device)
        return hf.requires_grad_(False), fm.requires_grad_(False)
    from granite_fms.testing import variant_config, variant_hf_config

    config = variant_config(name)
    return in_memory_models(
        variant_hf_config(name), device, dtype, config.lora_rank, config.lora_alpha
    )


def in_memory_models(hf_config, device, dtype, lora_rank: int = 0, lora_alpha: float = 0.0):
    """transformers' random init (+ a random peft LoRA on q/v) and the FMS model built from its
    state dict through the registered adapter; nothing is written to disk."""
    from fms.utils import serialization
    from transformers import GraniteSpeechForConditionalGeneration

    from granite_fms.hf.config import fms_config_from_hf
    from granite_fms.models.granite_speech import GraniteSpeech

    torch.manual_seed(0)
    with torch.device(device):
        hf = GraniteSpeechForConditionalGeneration._from_config(hf_config, dtype=dtype)
    config = fms_config_from_hf(hf.config)
    if lora_rank:
        from peft import LoraConfig

        hf.add_adapter(
            LoraConfig(
                r=lora_rank,
                lora_alpha=lora_alpha,
                init_lora_weights=False,
                target_modules=["q_proj", "v_proj"],
            )
        )
        config = config.updated(lora_rank=lora_rank, lora_alpha=lora_alpha)
    hf = hf.to(device=device, dtype=dtype).eval().requires_grad_(False)
    state = serialization.get_adapted(
        "granite_speech", "hf", dict(hf.state_dict()), {"model_config": config}
    )
    with torch.device("meta"):
        fm = GraniteSpeech(config)
    fm.load_state_dict(state, strict=False, assign=True)
    fm.post_init()
    return hf, fm.eval().requires_grad_(False)


# ----- what an ablation or profile script measures on ----------------------------------------


@dataclass
class Bench:
    """Models on a device, the target workload (10 s, batch 1; --quick: 1 s) and repetitions."""

    device: torch.device
    hf: object
    fm: object
    workload: Workload
    reps: dict
    args: argparse.Namespace  # the script's own options too (run_bench's `options`)

    @functools.cached_property
    def generator(self):
        """The compiled pipeline's Generator (mode "default": no CUDA graphs)."""
        from granite_fms.pipeline import SpeechPipeline

        return SpeechPipeline(self.fm).compile(mode="default").generator

    def workload_of(self, audio_s: float, batch: int) -> Workload:
        return make_workload(self.fm, audio_s, batch, self.workload.new_tokens)


def bench_parser(doc: str | None):
    parser = harness.parser(doc)
    parser.add_argument("--model", default="tiny", choices=MODELS)
    return parser


def bench(args, tmp: Path) -> Bench:
    """Build the models of `args.model` in `--dtype`; compiles are cold (unless
    --compile-cache). --quick: a 1 s clip, 4 new tokens, one or two timed calls."""
    device = harness.device_of(args)
    harness.compile_cache(args, tmp / "inductor")
    torch.set_grad_enabled(False)
    hf, fm = build_models(args.model, device, harness.dtype_of(args), tmp)
    tokens = 4 if args.quick else (128 if device.type == "cuda" else 32)
    reps = (
        {"stage": (1, 2, 0.2), "decode": (1, 1, 0.0)}
        if args.quick
        else {"stage": (3, 15, 1.5), "decode": (2, 3, 2.0)}
    )
    workload = make_workload(fm, 1 if args.quick else 10, 1, tokens)
    return Bench(device, hf, fm, workload, reps, args)


def model_note(name: str, dtype: torch.dtype) -> str:
    short = {torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]
    weights = "built-in default variant, random weights" if name == "tiny" else "random weights"
    return f"{name} ({weights}, {short})"


def variant_rows(summaries: dict[str, dict]) -> list[dict]:
    """Rows of a run file from `harness.round_robin`'s summaries: one per variant."""
    return [{"variant": name, **summary} for name, summary in summaries.items()]


def run_bench(
    experiment: str,
    doc: str | None,
    argv,
    measure: Callable[[Bench], dict],
    expected_s: float = 60,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
    **about,
) -> int:
    """The main() of an ablation or profile script: arguments (harness.parser + --model, and
    the script's own that `options(parser)` adds), the models, `measure(bench)` -> rows,
    evidence and anything else for the run file, which also gets the target workload and
    `about` (what, headline). `expected_s`: the seconds `measure` takes on 2 unloaded cores,
    for the progress estimate."""
    parser = bench_parser(doc)
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    device = harness.device_of(args)
    scope = harness.scope_of(device, args.model)
    run = harness.Run(experiment, scope, args, model=model_note(args.model, harness.dtype_of(args)))
    progress = harness.Progress(experiment, {"models": 15, "measure": expected_s})
    with tempfile.TemporaryDirectory(prefix=f"{experiment}-") as tmp:
        b = bench(args, Path(tmp))
        progress.done("models")
        payload = measure(b)
        progress.done("measure")
    run.write(workload=b.workload.label, **about, **payload, steps_s=progress.seconds)
    return 0
