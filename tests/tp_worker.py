"""One rank of the tensor-parallel checks, started by test_tensor_parallel.py as
`torchrun --standalone --nproc-per-node 2 tests/tp_worker.py OUT NAME=CKPT... --bad NAME=CKPT...`.

For each checkpoint the rank loads it sharded three ways (load_model through
SpeechPipeline.from_pretrained, get_model hf_pretrained, get_model with a variant), runs
`run_checks` and saves what it measured to OUT/rank{r}.pt; the test compares that with
`run_checks` on the same checkpoint in one process.
"""

import argparse
from pathlib import Path
from typing import Any

import torch
from fms.models import get_model
from transformers import AutoConfig

import granite_fms
from granite_fms.app.ranks import init_distributed
from granite_fms.audio.features import AudioFeatures
from granite_fms.inference.compile import CompileConfig
from granite_fms.inference.generation import BucketPolicy, Generator
from granite_fms.models.granite_speech import GraniteSpeech
from granite_fms.models.tp import parameter_counts
from granite_fms.pipeline import SpeechPipeline
from helpers import fms_generate

FRAMES = (45, 28)  # two clips of different lengths: padded frames and prompts in one batch
NEW_TOKENS = 6
# One bucket just above these requests: fewer graphs and less padding than the defaults.
POLICY = BucketPolicy(audio_frames=(48,), prompt_tokens=(32,), batch=(4,), cache_tokens=16)


def requests(model: GraniteSpeech) -> tuple[list[torch.Tensor], AudioFeatures]:
    """Deterministic prompts (placeholders expanded) and padded features for FRAMES."""
    gen = torch.Generator().manual_seed(7)
    feats = torch.randn(len(FRAMES), max(FRAMES), 160, generator=gen)
    mask = torch.zeros(len(FRAMES), max(FRAMES), dtype=torch.bool)
    for i, n in enumerate(FRAMES):
        mask[i, :n] = True
    counts = model.audio_token_counts(mask)
    audio_id = model.config.audio_token_index
    ids = [
        torch.tensor([1, 5] + [audio_id] * int(c) + [7, 8, 9][: i + 1])
        for i, c in enumerate(counts)
    ]
    return ids, AudioFeatures(feats * mask[..., None], mask, counts)


def counting_backend(all_reduces: list[int]):
    """aot_eager, recording how many all-reduces each compiled graph holds."""
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(gm: torch.fx.GraphModule, example_inputs):
        all_reduces.append(sum("all_reduce" in str(node.target) for node in gm.graph.nodes))
        return aot_eager(gm, example_inputs)

    return backend


@torch.no_grad()
def run_checks(model: GraniteSpeech, compile: bool) -> dict[str, Any]:
    """Logits (adapter on, off, text only); greedy tokens of FMS's `generate`, of the pipeline
    (eager, from a waveform) and of the Generator (compiled with aot_eager if `compile`), and
    the Generator's beam search (tokens and scores)."""
    ids, feats = requests(model)
    one = ids[0][None]
    clip = feats.input_features[:1, : FRAMES[0]]
    out: dict[str, Any] = {}
    for mode in ("on", "off"):
        model.set_adapter(mode)
        out[f"logits_adapter_{mode}"] = model(one, input_features=clip)
    model.set_adapter("auto")
    model.start_request(False)
    text = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])
    out["logits_text"] = model(text)
    out["tokens_fms_audio"] = fms_generate(model, one, clip, None, new=NEW_TOKENS).tolist()
    out["tokens_fms_text"] = fms_generate(model, text, new=NEW_TOKENS).tolist()
    wave = 0.1 * torch.randn(8000, generator=torch.Generator().manual_seed(8))
    pipe = SpeechPipeline(model, generator=Generator(model, POLICY))
    out["tokens_pipeline"] = pipe.generate_ids(
        wave, prompt_ids=[1, 5, model.config.audio_token_index, 7], max_new_tokens=NEW_TOKENS
    )

    all_reduces: list[int] = []
    backend = counting_backend(all_reduces)
    gen = Generator(model, POLICY, compile=CompileConfig(backend=backend) if compile else None)
    for key, request in {
        "audio": dict(input_ids=ids, features=feats),
        "text": dict(input_ids=[text[0]]),
        "beams": dict(input_ids=ids, features=feats, num_beams=2),
    }.items():
        results = gen.generate(**request, max_new_tokens=NEW_TOKENS)
        out[f"tokens_generator_{key}"] = [r.tokens for r in results]
    out["beam_scores"] = torch.tensor([r.score for r in results])
    out["graph_all_reduces"] = all_reduces
    return out


def _variant_kwargs(path: Path) -> dict[str, Any]:
    config = granite_fms.fms_config_from_hf(AutoConfig.from_pretrained(path), path)
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def _load_error(loader: str, path: str, strategy: str | None) -> str | None:
    """The ValueError message that loading `path` sharded gives, None if it loads."""
    try:
        if loader == "load_model":
            granite_fms.load_model(path, distributed_strategy=strategy)
        else:
            get_model("hf_pretrained", model_path=path, distributed_strategy=strategy)
    except ValueError as e:
        return str(e)
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("checkpoints", nargs="+", help="NAME=DIR")
    parser.add_argument(
        "--bad", nargs="*", default=[], help="NAME=DIR: checkpoints the ranks do not divide"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    strategy, _ = init_distributed("cpu")
    rank = torch.distributed.get_rank()

    results: dict[str, Any] = {"world_size": torch.distributed.get_world_size()}
    for item in args.checkpoints:
        name, path = item.split("=", 1)
        model = SpeechPipeline.from_pretrained(path, distributed_strategy=strategy).model
        res = run_checks(model, compile=True)
        res["parameters"] = parameter_counts(model)
        res["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        others = {
            "get_model_hf_pretrained": get_model(
                "hf_pretrained", model_path=path, distributed_strategy=strategy
            ),
            "get_model_variant": get_model(
                "granite_speech",
                "tiny",
                model_path=path,
                source="hf",
                distributed_strategy=strategy,
                **_variant_kwargs(Path(path)),
            ),
        }
        for label, other in others.items():
            theirs = other.state_dict()
            res[f"{label}_differs"] = sorted(
                k for k, v in res["state"].items() if not torch.equal(v, theirs[k])
            )
        results[name] = res

    for item in args.bad:
        name, path = item.split("=", 1)
        for loader in ("load_model", "get_model"):
            results[f"bad_{name}_{loader}"] = _load_error(loader, path, strategy)

    torch.save(results, args.out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
