"""The experiments' FMS mode in bf16 on CPU: the stage tasks a GPU latency run times."""

import torch

from experiments.modes import fms_mode, make_workload
from granite_fms.app.demo import random_pipeline


def test_fms_eager_stages_run_in_bf16():
    """The eager stages call the encoder directly on fp32 features: they must be cast to the
    encoder's dtype as `GraniteSpeech.audio_embeddings` does (a bf16 model failed with
    "mat1 and mat2 must have the same dtype")."""
    pipe = random_pipeline("tiny", dtype=torch.bfloat16)
    w = make_workload(pipe.model, 1.0, 1, 2)
    _, stages = fms_mode(pipe, w, {"stage": (1, 1, 1.0), "decode": (1, 1, 1.0), "e2e": (1, 1, 1.0)})
    tasks = stages()
    for name in ("encoder", "projector", "merge"):
        out = tasks[name].fn()
        assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all(), name
