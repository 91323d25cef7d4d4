"""Tensor parallel: 2 CPU processes (torchrun, gloo) give what one process gives.

One torchrun job (tp_worker.py) loads the 3.3-style (LoRA, tied head) and 4.x-style (no LoRA,
untied) tiny checkpoints sharded over 2 ranks and runs every check; the tests here compare each
rank's results with the same checks in this process. Tolerance as in test_parity: 1e-5 of the
reference's max magnitude (the all-reduce sums the heads' partial outputs in another order).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fms.distributed.strategy import UniformModelParallelStrategy

import granite_fms
import tp_worker
from granite_fms.app.ranks import init_distributed
from granite_fms.models.tp import strategy_from_name
from granite_fms.testing import save_hf_checkpoint, tiny_hf_config
from helpers import rel_err

WORLD = 2
TOL = 1e-5
STYLES = ["3.3", "4.x"]


@pytest.fixture(scope="module")
def checkpoints(ckpt_33, ckpt_4x) -> dict[str, Path]:
    return {"3.3": ckpt_33, "4.x": ckpt_4x}


# Tiny LLMs that 2 ranks do not divide, and the message each must give.
INDIVISIBLE = {
    "nheads": (dict(hidden_size=48, num_attention_heads=3, num_key_value_heads=1), "nheads=3 is"),
    "kvheads": (dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=3), "kvheads=3"),
    "mlp": (dict(intermediate_size=95), "MLP hidden size 95"),
}


@pytest.fixture(scope="module")
def indivisible(tmp_path_factory) -> dict[str, Path]:
    paths = {}
    for name, (text, _) in INDIVISIBLE.items():
        paths[name] = tmp_path_factory.mktemp(f"indivisible_{name}")
        config = tiny_hf_config("4.x", text_config=text)
        save_hf_checkpoint(paths[name], config, lora_rank=None, seed=4)
    return paths


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, checkpoints, indivisible) -> list[dict]:
    """Each rank's results from one torchrun job on WORLD CPU processes."""
    out = tmp_path_factory.mktemp("tp_out")
    tests = Path(__file__).parent
    src = Path(granite_fms.__file__).parents[1]  # the granite_fms this process imports
    pythonpath = [str(src), str(tests), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in pythonpath if p))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port of its own
        f"--nproc-per-node={WORLD}",
        str(tests / "tp_worker.py"),
        str(out),
        *(f"{name}={path}" for name, path in checkpoints.items()),
        "--bad",
        *(f"{name}={path}" for name, path in indivisible.items()),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.fixture(scope="module")
def single(checkpoints) -> dict[str, tuple]:
    """The same checks in this process, unsharded (Generator eager: same code, no compile)."""
    out = {}
    for name, path in checkpoints.items():
        model = granite_fms.load_model(path)
        out[name] = model, tp_worker.run_checks(model, compile=False)
    return out


def test_the_job_ran_on_two_ranks(ranks):
    assert [r["world_size"] for r in ranks] == [WORLD] * WORLD


@pytest.mark.parametrize("style", STYLES)
def test_logits_equal_one_process(ranks, single, style):
    _, ref = single[style]
    keys = [k for k in ref if k.startswith("logits")]
    assert len(keys) == 3
    for rank, res in enumerate(ranks):
        for key in keys:
            err = rel_err(ref[key], res[style][key])
            assert err < TOL, f"rank {rank} {key}: relative error {err:.2e}"
    on_off = rel_err(ref["logits_adapter_on"], ref["logits_adapter_off"])
    if style == "3.3":  # the adapter changes the logits, so "on" checks the sharded B
        assert on_off > 1e-2
    else:
        assert on_off == 0.0


@pytest.mark.parametrize("style", STYLES)
def test_generated_tokens_identical(ranks, single, style):
    """Greedy: FMS's generate, the eager pipeline and the aot_eager-compiled Generator; and the
    compiled Generator's beam search, on every rank."""
    _, ref = single[style]
    keys = [k for k in ref if k.startswith("tokens")]
    assert len(keys) == 6
    for rank, res in enumerate(ranks):
        for key in keys:
            assert res[style][key] == ref[key], f"rank {rank} {key}"
        err = rel_err(ref["beam_scores"], res[style]["beam_scores"])
        assert err < TOL, f"rank {rank} beam scores: relative error {err:.2e}"


@pytest.mark.parametrize("style", STYLES)
def test_compiled_graphs_hold_the_all_reduces(ranks, single, style):
    """fullgraph=True traced FMS's functional all-reduce: two per decoder block in the LLM
    graphs (attention and MLP), none in the replicated audio path nor in beam search's cache
    reorder (a gather of each rank's own heads)."""
    model, _ = single[style]
    per_llm_graph = 2 * model.config.text_config.nlayers
    for res in ranks:
        counts = res[style]["graph_all_reduces"]
        assert counts.count(0) == 2  # the audio path (encoder, projector), the reorder
        assert counts.count(per_llm_graph) == len(counts) - 2 >= 2  # prefill and decode


def test_lora_b_split_like_the_fused_qkv_rows(ranks, single):
    """On rank r: its query heads' rows of the fused QKV and of B_q, its kv heads' rows of the
    fused QKV and of B_v; A whole."""
    model, _ = single["3.3"]
    text = model.config.text_config
    full = model.state_dict()
    name = "language_model.base_model.layers.1.attn.in_proj.{}.weight".format
    q_dim, kv_dim = text.nheads * text.head_dim, text.kvheads * text.head_dim
    q_all, k_all, v_all = full[name("qkv_fused")].split([q_dim, kv_dim, kv_dim])
    q_rows, kv_rows = q_dim // WORLD, kv_dim // WORLD
    for rank, res in enumerate(ranks):
        local = res["3.3"]["state"]
        q, k, v = local[name("qkv_fused")].split([q_rows, kv_rows, kv_rows])
        mine_q = slice(rank * q_rows, (rank + 1) * q_rows)
        mine_kv = slice(rank * kv_rows, (rank + 1) * kv_rows)
        assert torch.equal(q, q_all[mine_q])
        assert torch.equal(local[name("lora_b_q")], full[name("lora_b_q")][mine_q])
        assert torch.equal(k, k_all[mine_kv]) and torch.equal(v, v_all[mine_kv])
        assert torch.equal(local[name("lora_b_v")], full[name("lora_b_v")][mine_kv])
        assert torch.equal(local[name("lora_a")], full[name("lora_a")])


@pytest.mark.parametrize("style", STYLES)
def test_parameter_counts_llm_blocks_halved_rest_replicated(ranks, style):
    for res in ranks:
        counts = res[style]["parameters"]
        for part in ("encoder", "projector"):
            assert counts[part]["sharded"] == 0
            assert counts[part]["replicated"] == counts[part]["unsharded_total"] > 0
        llm = counts["llm"]
        assert llm["sharded"] > 0 and llm["replicated"] > 0  # embedding, head, norms, LoRA A
        assert WORLD * llm["sharded"] + llm["replicated"] == llm["unsharded_total"]


@pytest.mark.parametrize("style", STYLES)
def test_get_model_loads_the_same_shards(ranks, style):
    """get_model("hf_pretrained") and get_model("granite_speech", variant, source="hf")."""
    for res in ranks:
        assert res[style]["get_model_hf_pretrained_differs"] == []
        assert res[style]["get_model_variant_differs"] == []


@pytest.mark.parametrize("loader", ["load_model", "get_model"])
@pytest.mark.parametrize("case", INDIVISIBLE)
def test_sizes_that_do_not_divide_are_refused(ranks, case, loader):
    for res in ranks:
        message = res[f"bad_{case}_{loader}"]
        assert message is not None, f"{loader} loaded a {case} size that 2 ranks do not divide"
        assert INDIVISIBLE[case][1] in message and "over 2 ranks" in message


# ----- errors that need no process group ------------------------------------------------------


def test_unsupported_strategies_are_refused(ckpt_4x):
    with pytest.raises(ValueError, match="must be None or 'tp'"):
        granite_fms.load_model(ckpt_4x, distributed_strategy="fsdp")
    with pytest.raises(ValueError, match="needs an initialised process group"):
        strategy_from_name("tp")
    pipeline_parallel = UniformModelParallelStrategy([0, 1], num_layers=2)
    with pytest.raises(ValueError, match="UniformModelParallelStrategy is not supported"):
        with torch.device("meta"):
            granite_fms.GraniteSpeech(distributed_strategy=pipeline_parallel)


def test_init_distributed_needs_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="needs torchrun"):
        init_distributed("cpu")
