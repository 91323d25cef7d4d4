"""Every experiment's --quick run in bf16 on CPU at the smallest size, and the GPU suite's.

The code a GPU runs (the dtype casts, every mode and stage, the suite's parts) then runs on
every commit; only what needs CUDA (CUDA graphs, CUDA timing, kernel profiles) stays behind
`harness.gpu_only`. Two lanes, one thread each, side by side: the GPU suite (its parts are
scripts' main()), then `experiments.check` against its latency run and `bench_serve`; and
tests/experiments_worker.py with every other script's main(). They
share one Inductor cache (--compile-cache: warm compiles, which smoke runs do not measure);
the run files go to a temporary directory and each test reads one.
"""

import json
import math
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMMON = ("--quick", "--threads", "1", "--dtype", "bfloat16")
SUITE_PARTS = {  # the suite's part -> the script whose run file it writes
    "latency": "latency",
    "throughput": "bench_throughput",
    "first_request": "compile_cost",
    "profile": "profile_regions",
    "lora_merge": "ablate_lora_merge",
    "inductor": "ablate_inductor",
    "int8": "bench_int8",
    "beam": "bench_beam",
}
OTHERS = {  # script -> its own arguments; census last (it turns Inductor's caches off)
    "ablate_sdpa": ("--device", "cpu"),
    "ablate_kv_cache": ("--device", "cpu"),
    "ablate_fused_weights": ("--device", "cpu"),
    "ablate_freezing": ("--device", "cpu"),
    "ablate_merge": ("--device", "cpu"),
    "bench_audio_buckets": ("--device", "cpu"),
    "compile_cost": ("--device", "cpu", "--parts", "model", "encoder"),  # warm: the suite's
    "longform": (),
    "census_generator": (),
    "bench_ctc": (),
    "census": (),
}
PARITY = ("parity", "--quick", "--threads", "1", "--configs", "tiny-3.3")  # every dtype itself
# Two bf16 computations of the same function that round at different points (fused kernels,
# merged weights, another attention backend): within 0.1 of the output's scale, about 25 units
# of bf16's last place (2^-8); a wrong cast, mask or weight is off by the scale itself.
BF16_SAME = 0.1


def _lane(cmds: list[list[str]]) -> list[tuple[int, str]]:
    """Runs the commands one after another: (exit code, output) of each."""
    out = []
    for cmd in cmds:
        done = subprocess.run(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800
        )
        out.append((done.returncode, done.stdout))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[int, str, Path]]:
    """Script name -> (exit code, the end of its log, its runs directory)."""
    suite_out, out = tmp_path_factory.mktemp("suite"), tmp_path_factory.mktemp("runs")
    shared = ("--compile-cache", str(tmp_path_factory.mktemp("inductor")))
    suite = [sys.executable, "-m", "experiments.gpu_suite", "--device", "cpu", *COMMON, *shared]
    suite += ["--out", str(suite_out)]
    # after the suite, the reproducibility check of its latency run, then the server's load
    check = [sys.executable, "-m", "experiments.check", *COMMON, *shared, "--out", str(out)]
    check += ["--against", str(suite_out / "latency" / "cpu.json")]
    serve = [sys.executable, "-m", "experiments.bench_serve", *COMMON, "--out", str(out)]
    worker = [sys.executable, str(REPO / "tests" / "experiments_worker.py")]
    for name, args in OTHERS.items():
        worker += [name, *args, *COMMON, *shared, "--out", str(out), "--"]
    worker += [*PARITY, *shared, "--out", str(out)]
    with ThreadPoolExecutor(2) as pool:
        [(code, suite_log), checked, served], [(_, worker_log)] = pool.map(
            _lane, [[suite, check, serve], [worker]]
        )
    (out / "worker.log").write_text(worker_log)  # with the run files, for a failure's story
    result = {"gpu_suite": (code, suite_log[-6000:], suite_out), "worker": (0, worker_log, out)}
    result["check"] = (checked[0], checked[1][-6000:], out)
    result["bench_serve"] = (served[0], served[1][-6000:], out)
    # the worker's log, cut after each script's `experiments_worker: NAME CODE` line
    parts = re.split(r"^experiments_worker: (\w+) (\d+)$", worker_log, flags=re.M)
    for i in range(1, len(parts) - 1, 3):
        result[parts[i]] = (int(parts[i + 1]), parts[i - 1][-6000:], out)
    return result


def run_file(runs, name: str, experiment: str | None = None) -> dict:
    """The run file of one run, after checking it exited cleanly, in bf16, quick, with rows."""
    assert name in runs, f"the worker never finished {name}:\n{runs['worker'][1][-6000:]}"
    code, log, out = runs[name]
    assert code == 0, f"{name} exited with {code}:\n{log}"
    record = json.loads((out / (experiment or name) / "cpu.json").read_text())
    assert record["quick"] is True and record["rows"] and record["provenance"]["git"]
    if name != "parity":
        assert record["dtype"] == "bfloat16"
    return record


def positive(*values) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in values)


# ----- the GPU suite and its parts ----------------------------------------------------------


def test_gpu_suite_runs_every_part(runs):
    suite = run_file(runs, "gpu_suite")
    assert suite["environment"]["problems"] == []
    assert {r["part"]: r["state"] for r in suite["rows"]} == dict.fromkeys(SUITE_PARTS, "done")
    assert "fp8_weight_only" in suite["not_measured"]
    for part, experiment in SUITE_PARTS.items():
        assert run_file(runs, "gpu_suite", experiment)["model"].startswith("tiny"), part


def test_latency_every_mode_and_stage_in_bf16(runs):
    r = run_file(runs, "gpu_suite", "latency")
    stages = {(row["mode"], row["stage"]) for row in r["rows"] if "model" not in row}
    for mode in ("hf_eager", "hf_compiled", "fms_eager", "fms_compiled"):
        assert {(mode, s) for s in ("e2e", "prefill", "decode", "audio_path")} <= stages
    # the eager modules one by one: the encoder called on the bucketed fp32 features
    assert {("fms_eager", s) for s in ("encoder", "projector", "merge")} <= stages
    assert all(positive(row["median_ms"]) for row in r["rows"] if "median_ms" in row)
    agreement = r["token_agreement"]["1s_b1"]
    assert agreement["hf_eager"] == 1.0
    assert all(0.5 <= v <= 1.0 for v in agreement.values()), agreement  # bf16 rounding only
    assert positive(r["evidence"]["decode_floor_ms"], r["evidence"]["e2e_speedup_vs_hf_eager"])
    assert any(row.get("model") == "3.3 encoder+projector" for row in r["rows"])


def test_throughput_rows(runs):
    r = run_file(runs, "gpu_suite", "bench_throughput")
    assert {(row["mode"], row["batch"]) for row in r["rows"]} == {
        (m, 2) for m in ("hf_eager", "hf_compiled", "fms_eager", "fms_compiled")
    }
    assert all(positive(row["rtfx"], row["tokens_per_s"]) for row in r["rows"])


def test_first_request_cold_and_warm(runs):
    ev = run_file(runs, "gpu_suite", "compile_cost")["evidence"]
    assert ev["warm_same_tokens_symbolic"] is True
    assert positive(ev["cold_first_s_symbolic"], ev["warm_first_s_symbolic"])
    assert ev["warm_fxgraph_cache_miss_symbolic"] == 0  # the artifact's graphs, none compiled


def test_profile_and_floor(runs):
    r = run_file(runs, "gpu_suite", "profile_regions")
    assert set(r["regions"]) == {"decode_step", "audio"}
    assert positive(r["evidence"]["decode_call_ms"], r["evidence"]["decode_vs_floor"])
    assert "kernel_gap_ms_per_call" in r["not_measured"]  # a GPU only
    share = r["evidence"].get("decode_step_lora_share")
    assert share is None or 0 < share < 1


def test_lora_merged_matches_unmerged(runs):
    ev = run_file(runs, "gpu_suite", "ablate_lora_merge")["evidence"]
    assert ev["merged_prefill_logits_rel_err"] < BF16_SAME
    assert ev["merged_greedy_token_agreement"] >= 0.5
    assert positive(ev["decode_step_ms_unmerged"], ev["decode_step_ms_merged"])


def test_inductor_variants_agree(runs):
    ev = run_file(runs, "gpu_suite", "ablate_inductor")["evidence"]
    for name in ("coordinate_descent", "max_autotune"):
        assert ev[f"logits_rel_diff_{name}"] < BF16_SAME
        assert positive(ev[f"decode_step_ms_{name}"])


def test_int8_and_beam(runs):
    ev = run_file(runs, "gpu_suite", "bench_int8")["evidence"]
    assert ev["prefill_logits_rel_err"] < BF16_SAME and 0 <= ev["greedy_token_agreement"] <= 1
    beam = run_file(runs, "gpu_suite", "bench_beam")
    assert [row["variant"] for row in beam["rows"]] == ["num_beams=1", "num_beams=4"]
    assert positive(beam["evidence"]["beam4_over_greedy"])


# ----- the other experiments ----------------------------------------------------------------


def test_census_in_bf16(runs):
    ev = run_file(runs, "census")["evidence"]
    assert ev["fms_forward_graph_breaks"] == 0 and ev["fms_forward_fullgraph_ok"] is True
    assert ev["hf_forward_graph_breaks"] > 0


def test_census_generator_in_bf16(runs):
    ev = run_file(runs, "census_generator")["evidence"]
    assert ev["recompiles_second"] == 0
    assert ev["bucket_padding_max_rel"] < BF16_SAME


@pytest.mark.parametrize(
    "name,ratio",
    [
        ("ablate_sdpa", "math_over_auto_compiled"),
        ("ablate_kv_cache", "static_speedup_compiled"),
        ("ablate_fused_weights", "unfused_over_fused_compiled"),
        ("ablate_freezing", "plain_over_freezing"),
        ("ablate_merge", "boolean_over_gather_compiled"),
        ("bench_audio_buckets", "worst_compiled_over_eager_symbolic"),
    ],
)
def test_ablations_in_bf16(runs, name, ratio):
    r = run_file(runs, name)
    assert positive(r["evidence"][ratio])
    if name == "ablate_sdpa":
        assert r["evidence"]["max_rel_diff_auto_vs_math"] < BF16_SAME
    if name == "ablate_merge":
        assert r["evidence"]["outputs_equal"] is True


def test_compile_cost_in_bf16(runs):
    ev = run_file(runs, "compile_cost")["evidence"]
    assert positive(ev["tiny_steady_ms_b1_regional"], ev["tiny_request_s_b1_regional"])
    assert ev["tiny_same_tokens"] is True
    assert ev["encoder_max_rel_err"] < BF16_SAME


def test_longform_in_bf16(runs):
    ev = run_file(runs, "longform")["evidence"]
    assert ev["same_tokens"] is True and ev["windows"] > 1


def test_parity_quick(runs):
    r = run_file(runs, "parity")
    assert r["passed"] is True
    assert {row["dtype"] for row in r["rows"]} == {"fp32", "bf16", "fp64"}


def test_bench_ctc_in_bf16(runs):
    r = run_file(runs, "bench_ctc")
    ev = r["evidence"]
    assert positive(ev["rtfx_fms_compiled_b2"], ev["rtfx_hf_eager_b2"])
    assert ev["census_graph_breaks"] == 0 and ev["census_graphs_second"] == 0
    # bf16 rounding flips some frames of a random model (transformers' own bf16 text is about
    # 6% of characters from its fp32 one); a wrong cast or mask gives another text altogether
    cer = {row["mode"]: row["cer_vs_hf"] for row in r["rows"]}
    assert set(cer) == {"fms_eager", "fms_compiled", "hf_eager"}
    assert max(cer["fms_eager"], cer["fms_compiled"]) == ev["max_cer_vs_hf_b2"] < 0.25


def test_bench_serve_in_bf16(runs):
    r = run_file(runs, "bench_serve")
    assert "bfloat16" in r["model"]
    for row in r["rows"]:
        assert row["errors"] == 0 and row["requests"] > 0, row
        assert positive(row["throughput_audio_s_per_s"], row["mean_batch_size"])


def test_check_against_the_suites_latency_run(runs):
    """The reproducibility check re-measures the quick latency run's headline ratios; under a
    test's load the verdict may be any of agree (0), drift (1) or inconclusive (3)."""
    code, log, out = runs["check"]
    assert code in (0, 1, 3), f"check exited with {code}:\n{log}"
    r = json.loads((out / "check" / "cpu.json").read_text())
    assert r["against"].endswith("latency/cpu.json") and r["dtype"] == "bfloat16"
    assert {c["ratio"] for c in r["comparison"]} == {
        "e2e_speedup_vs_hf_eager",
        "e2e_speedup_vs_hf_compiled",
    }
    assert all(positive(c["committed"], c["now"]) for c in r["comparison"])
    assert re.search(r"^check: (agrees|DRIFT|INCONCLUSIVE)", log, flags=re.M), log
