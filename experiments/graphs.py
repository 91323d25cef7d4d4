"""Counting what torch.compile does over a stream of requests: graphs, breaks, recompiles.

Shared by census.py (Hugging Face vs this project, region by region) and census_generator.py
(the bucketed `Generator`). The checkpoint is written by Hugging Face's own classes:
`tiny_hf_config("3.3")` widths with the released encoder context (200 frames, max_pos_emb
512, since the encoder's recompile pattern depends on it), a peft LoRA r=4 on q/v, active as for
audio requests; on CPU in the run's dtype, loaded both ways.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch._dynamo.testing import CompileCounterWithBackend

from experiments import harness
from experiments.harness import REPO

RECOMPILE_LIMIT = 64
FRAMES_PER_SECOND = 50  # encoder frames (stacked mel frames) per second of audio
CHECKPOINT = (
    "tiny_hf_config('3.3') widths, the released encoder context (200 frames), peft LoRA r=4 "
    "(on), random weights written by transformers"
)


@dataclasses.dataclass(frozen=True)
class Request:
    """Clips (seconds of audio, one row each) and a text suffix length in tokens."""

    seconds: tuple[float, ...]
    suffix: int


# fmt: off
# A stream of requests: nine audio lengths 0.5-30 s, text suffixes, batches of 1 to 4 clips.
SWEEP = [Request((0.5,), 2), Request((1.3,), 6), Request((2.9, 1.3), 11), Request((4.7,), 17),
         Request((7.5, 2.9, 0.5), 4), Request((11,), 9), Request((17, 4.7, 11, 0.5), 14),
         Request((23,), 20), Request((30,), 3)]
QUICK_SWEEP = [Request((0.5,), 2), Request((4.7, 1.3), 17)]
# Steady state: new lengths close to the sweep's, in the same 200-frame encoder blocks and
# batch sizes (for the Generator: buckets it has seen), i.e. what a warm server still compiles.
SECOND_SWEEP = [Request((0.6,), 3), Request((1.2,), 5), Request((2.8, 1.4), 10),
                Request((4.6,), 16), Request((7.3, 2.7, 0.6), 5), Request((10.6,), 8),
                Request((16.5, 4.5, 10.5, 0.7), 13), Request((22,), 19),
                Request((29.5,), 4)]
QUICK_SECOND_SWEEP = [Request((4.6, 1.2), 16)]
# Encoder block counts the sweeps never had (13 s: 4 blocks of 200 frames, 26 s: 7), in audio
# buckets the Generator has seen: does a new block count compile again?
NEW_BLOCKS = [Request((13,), 7), Request((26,), 12)]
QUICK_NEW_BLOCKS = [Request((13,), 7)]
# fmt: on


def sweeps(quick: bool) -> dict[str, list[Request]]:
    if quick:
        return {"sweep": QUICK_SWEEP, "second": QUICK_SECOND_SWEEP, "new_blocks": QUICK_NEW_BLOCKS}
    return {"sweep": SWEEP, "second": SECOND_SWEEP, "new_blocks": NEW_BLOCKS}


@dataclasses.dataclass
class Inputs:
    """One request in both conventions."""

    features: torch.Tensor  # (B, T, 160), zero after each clip
    frame_mask: torch.Tensor  # (B, T): FMS's mask, over encoder frames
    proj_mask: torch.Tensor  # (B, N): HF's input_features_mask, over projector outputs
    input_ids: torch.Tensor  # (B, S)
    counts: torch.Tensor  # (B,) placeholders per clip


def make_inputs(request: Request, fm, gen: torch.Generator, dtype: torch.dtype) -> Inputs:
    frames = [round(s * FRAMES_PER_SECOND) for s in request.seconds]
    features = torch.zeros(len(frames), max(frames), 160)
    frame_mask = torch.zeros(len(frames), max(frames), dtype=torch.bool)
    for i, n in enumerate(frames):
        features[i, :n] = torch.randn(n, 160, generator=gen)
        frame_mask[i, :n] = True
    counts = fm.audio_token_counts(frame_mask)
    proj_mask = torch.arange(int(counts.max()))[None, :] < counts[:, None]
    audio_id, longest = fm.config.audio_token_index, int(counts.max())
    ids = [
        [1, 5, 6, *[audio_id] * n, *[7 + j % 50 for j in range(request.suffix + longest - n)]]
        for n in counts.tolist()
    ]
    return Inputs(features.to(dtype), frame_mask, proj_mask, torch.tensor(ids), counts)


def census_models(dtype: torch.dtype = torch.float32):
    """(HF model, FMS model): the census checkpoint, LoRA on, in `dtype`."""
    import granite_fms
    from granite_fms.testing import save_hf_checkpoint, tiny_hf_config

    config = tiny_hf_config("3.3", encoder_config=dict(context_size=200, max_pos_emb=512))
    with tempfile.TemporaryDirectory(prefix="census-") as tmp:
        hf = save_hf_checkpoint(tmp, config, lora_rank=4, lora_alpha=8.0, seed=0).to(dtype)
        fm = granite_fms.load_model(tmp, dtype=dtype)
    hf.enable_adapters()
    fm.set_adapter("on")
    return hf, fm


def census_inputs(fm, quick: bool, dtype: torch.dtype) -> dict[str, list[Inputs]]:
    """{sweep name: [Inputs]}, the features in `dtype`."""
    gen = torch.Generator().manual_seed(0)
    return {
        name: [make_inputs(r, fm, gen, dtype) for r in reqs] for name, reqs in sweeps(quick).items()
    }


def describe(quick: bool) -> dict:
    """The requests of each sweep, for the run file."""
    return {
        name: [{"seconds": list(r.seconds), "suffix": r.suffix} for r in reqs]
        for name, reqs in sweeps(quick).items()
    }


def _where(frame) -> str:
    parts = Path(frame.filename).parts
    if "site-packages" in parts:
        short = "/".join(parts[parts.index("site-packages") + 1 :])
    elif Path(frame.filename).is_relative_to(REPO):
        short = str(Path(frame.filename).relative_to(REPO))
    else:
        short = Path(frame.filename).name
    return f"{short}:{frame.lineno} {frame.name}: `{(frame.line or '').strip()}`"


def break_reason(reason) -> str:
    """First line of a graph-break reason, its debug context, and the innermost user frame."""
    lines = reason.reason.strip().splitlines()
    context = [ln.split(":", 1)[1].strip() for ln in lines if "Developer debug context" in ln]
    head = lines[0] + (f" ({context[0]})" if context and context[0] else "")
    return f"{head} at {_where(reason.user_stack[-1])}" if reason.user_stack else head


class LimitHits(logging.Handler):
    """Counts Dynamo's "hit config.recompile_limit" warnings."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0
        logging.getLogger("torch._dynamo.convert_frame").addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if "hit config." in record.getMessage():
            self.count += 1


class Counter(CompileCounterWithBackend):
    """Graphs compiled (eager backend) and, per frame, its compiles: what recompile_limit caps."""

    def __init__(self):
        super().__init__("eager")
        self.per_frame: dict[int, int] = {}

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        compile_id = torch._guards.CompileContext.current_compile_id()
        if compile_id is not None:
            self.per_frame[compile_id.frame_id] = compile_id.frame_compile_id + 1
        return super().__call__(gm, example_inputs)

    @property
    def max_per_frame(self) -> int:
        return max(self.per_frame.values(), default=0)


def static_facts(fn: Callable, args: tuple) -> dict:
    """Graphs, breaks and reasons from `torch._dynamo.explain`; whether fullgraph=True runs."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    torch._dynamo.reset()
    error = None
    try:
        torch.compile(fn, fullgraph=True, backend="eager")(*args)
    except Exception as exc:  # noqa: BLE001  (any failure to compile is the finding)
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return {
        "graphs": explained.graph_count,
        "graph_breaks": explained.graph_break_count,
        "break_reasons": list(dict.fromkeys(break_reason(r) for r in explained.break_reasons)),
        "fullgraph_ok": error is None,
        "fullgraph_error": error,
    }


def start(name: str, doc: str, argv: list[str] | None):
    """A census experiment's arguments, dtype and run file (on CPU, of `CHECKPOINT`), and
    Dynamo configured for counting (`configure`): (args, dtype, run, default limit, hits)."""
    args = harness.parser(doc, device=False).parse_args(argv)
    dtype = harness.dtype_of(args)
    run = harness.Run(name, "cpu", args, model=f"{CHECKPOINT}, {harness.dtype_name(dtype)}")
    return args, dtype, run, *configure()


def configure() -> tuple[int, LimitHits]:
    """Raise recompile_limit (returns the default), no compile caches, no autograd."""
    default = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
    torch._inductor.config.force_disable_caches = True
    torch.set_grad_enabled(False)
    return default, LimitHits()
