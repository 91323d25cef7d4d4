"""The experiments' harness on noise: the spread of a median, the flags on a run's conditions,
sampling until the spread is small, and that a flagged run never silently replaces a clean run
file. Fast, no model."""

import argparse
import json

import pytest
import torch

from experiments import harness

LOAD = {"start": [1.0, 1.0, 1.0], "end": [1.2, 1.0, 1.0]}


def timed_task(**changes) -> dict:
    """A `harness.TIMED` entry of a task timed on a quiet machine, with `changes`."""
    entry = dict(
        task="hf_eager e2e",
        calls=10,
        wall_s=1.0,
        cpu_s=0.97,
        runnable=[1, 1, 2],
        spread=0.03,
        cpu_over_wall=0.97,
        load_1min=[0.9, 1.2],
    )
    entry.update(changes)
    if "cpu_s" in changes:
        entry["cpu_over_wall"] = entry["cpu_s"] / entry["wall_s"]
    return entry


def judge(tasks, **kw) -> dict:
    return harness.judge(tasks, **{"threads": 1, "cores": 2, "on_gpu": False, "load": LOAD, **kw})


def test_median_spread_is_a_distribution_free_interval():
    assert harness.median_spread([1.0]) is None
    assert harness.median_spread([3.0, 1.0, 2.0]) == pytest.approx((3 - 1) / 2 / 2)  # min, max
    # n = 8: P(B <= 1) = 9/256 <= 5% < P(B <= 2), so the 2nd and 7th order statistics
    assert harness.median_spread(range(1, 9)) == pytest.approx((7 - 2) / 2 / 4.5)
    assert harness.median_spread([2.0] * 10) == 0.0
    assert harness.ratio_spread(0.03, 0.04) == pytest.approx(0.05)
    assert harness.ratio_spread(0.03, None) is None


def test_quiet_conditions_are_not_flagged():
    c = judge([timed_task(), timed_task(task="fms_compiled e2e", spread=0.1)])
    assert (c["flagged"], c["reasons"]) == (False, [])
    assert c["runnable"] == pytest.approx(4 / 3)
    assert c["cpu_over_wall"] == pytest.approx(0.97)
    assert c["spread"] == 0.1 and c["spread_task"] == "fms_compiled e2e"
    assert c["load_1min"] == {"start": 1.0, "end": 1.2, "timed_min": 0.9, "timed_max": 1.2}
    # at the thresholds, not above them
    assert not judge([timed_task(runnable=[2, 2], cpu_s=0.8)])["flagged"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"runnable": [3, 4, 3]}, "load 2.3 runnable threads on 2 cores"),
        ({"spread": 0.25}, "spread +-25% (slow one)"),
        ({"cpu_s": 0.43}, "cpu/wall 0.70"),
    ],
)
def test_each_condition_flags_a_run_and_says_why(change, reason):
    c = judge([timed_task(), timed_task(task="slow one", **change)])
    assert c["flagged"]
    assert c["reasons"] == [reason]


def test_cpu_time_is_not_judged_on_a_gpu():
    c = judge([timed_task(cpu_s=0.1)], on_gpu=True)
    assert not c["flagged"]
    assert c["thresholds"]["cpu_over_wall"] is None


def test_without_timed_tasks_the_load_average_decides():
    busy = {"start": [3.5], "end": [1.0]}
    c = judge([], load=busy)
    assert c["flagged"]
    assert c["reasons"] == ["1-minute load average 3.5 on 2 cores"]
    not_timed = judge([], load=busy, timings=False)
    assert not not_timed["flagged"] and not_timed["note"] == "no timings: not judged"


def run_file(flagged: bool | None, load: float = 1.0) -> dict:
    """A run file; flagged None: one written before runs recorded their conditions."""
    run = {
        "experiment": "latency",
        "scope": "cpu",
        "provenance": {
            "device": {"cpu_affinity": 2, "torch_threads": 2, "gpu": None},
            "load_average": {"start": [load], "end": [load]},
        },
        "rows": [{"median_ms": 1.0}],
    }
    if flagged is not None:
        reasons = ["load 3.1 runnable threads on 2 cores"] if flagged else []
        run["conditions"] = {"flagged": flagged, "reasons": reasons}
    return run


def test_run_files_without_conditions_are_judged_on_their_load():
    assert not harness.conditions_of(run_file(None, load=1.7))["flagged"]
    old = harness.conditions_of(run_file(None, load=3.4))
    assert old["flagged"] and old["recorded"] is False
    assert harness.conditions_of(run_file(True))["flagged"]
    served = {**run_file(None, load=8.5), "rows": [{"audio_s": 3.0, "p50_s": 6.0}]}
    assert harness.conditions_of(served)["flagged"]  # seconds are timings too
    counted = {**run_file(None, load=8.5), "rows": [{"audio_s": 3.0, "graph_breaks": 0}]}
    assert harness.conditions_of(counted)["note"] == "no timings: not judged"


@pytest.fixture
def refused(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "REFUSED", tmp_path / "refused")
    return tmp_path / "refused"


@pytest.mark.parametrize("old_file", [run_file(False), run_file(None, load=1.2)])
def test_a_flagged_run_never_silently_replaces_a_clean_one(tmp_path, refused, capsys, old_file):
    path = tmp_path / "runs" / "latency" / "cpu.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(old_file))
    written = harness.write_record(run_file(True), path)
    assert written == refused / "latency" / "cpu.json"
    assert json.loads(path.read_text()) == old_file
    assert json.loads(written.read_text()) == run_file(True)
    said = capsys.readouterr().out
    assert f"NOT replacing the clean run file {path}" in said
    assert "load 3.1 runnable threads" in said and "--replace-clean" in said

    assert harness.write_record(run_file(True), path, replace_clean=True) == path
    assert json.loads(path.read_text()) == run_file(True)


@pytest.mark.parametrize(("old", "new"), [(True, True), (True, False), (False, False)])
def test_other_runs_replace_the_file(tmp_path, refused, capsys, old, new):
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(run_file(old)))
    assert harness.write_record(run_file(new), path) == path
    assert json.loads(path.read_text()) == run_file(new)
    assert not refused.exists() and "NOT replacing" not in capsys.readouterr().out


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tasks_sample_until_the_spread_is_small(monkeypatch, restore_threads):
    """A task whose samples keep their spread gets EXTEND times its reps; a steady one stops
    at its reps; each records its conditions and enters TIMED."""
    monkeypatch.setattr(harness, "TIMED", [])
    noisy = iter([[1.0], [2.0]] * 10)
    tasks = {
        "steady": harness.Task(lambda: [1.0], (2, 3, 100.0), inner=True),
        "noisy": harness.Task(lambda: next(noisy), (2, 3, 100.0), inner=True),
    }
    out = harness.round_robin(tasks, torch.device("cpu"), warm_up=False)
    assert out["steady"]["runs"] == 3 and out["steady"]["conditions"]["spread"] == 0.0
    assert out["noisy"]["runs"] == 3 * harness.EXTEND
    assert out["noisy"]["conditions"]["spread"] > harness.SPREAD_MAX
    assert [t["task"] for t in harness.TIMED] == ["steady", "noisy"]
    assert len(harness.TIMED[1]["load_1min"]) == 2 and harness.TIMED[1]["calls"] == 6


def test_run_sets_one_thread_and_records_its_conditions(tmp_path, monkeypatch, restore_threads):
    monkeypatch.setattr(harness, "TIMED", [])
    args = argparse.Namespace(out=tmp_path, quick=False, threads=None, replace_clean=False)
    run = harness.Run("bench_x", "cpu", args, model="tiny")
    assert torch.get_num_threads() == harness.THREADS == 1
    harness.round_robin({"a": harness.Task(lambda: None, (3, 3, 0.0))}, torch.device("cpu"))
    path = run.write(rows=[], evidence={})
    c = json.loads(path.read_text())["conditions"]
    assert (c["threads"], c["threads_from"], c["timed_tasks"], c["timed_calls"]) == (
        1,
        "default",
        1,
        3,
    )
    assert set(c) >= {"runnable", "cpu_over_wall", "spread", "flagged", "reasons", "thresholds"}

    parsed = harness.parser(None).parse_args(["--threads", "2", "--out", str(tmp_path)])
    harness.Run("bench_x", "cpu", parsed, model="tiny")
    assert torch.get_num_threads() == 2
    with pytest.raises(SystemExit):
        harness.parser(None).parse_args(["--threads", "0"])


def test_the_check_compares_ratios_within_both_spreads():
    from experiments.check import compare

    committed = {"e2e_speedup_vs_hf_eager": 1.35, "e2e_speedup_vs_hf_compiled": 1.15}
    now = {
        "e2e_speedup_vs_hf_eager": 1.35 * 1.04,
        "e2e_speedup_spread_vs_hf_eager": 0.05,
        "e2e_speedup_vs_hf_compiled": 1.15 * 1.3,
        "e2e_speedup_spread_vs_hf_compiled": 0.04,
    }
    eager, compiled = compare(committed, now)  # the committed run recorded no spread: 0
    assert eager["agrees"] and eager["drift"] == pytest.approx(0.04)
    assert not compiled["agrees"] and compiled["allowed"] == pytest.approx(0.04)
    committed["e2e_speedup_spread_vs_hf_compiled"] = 0.3
    assert compare(committed, now)[1]["agrees"]  # sqrt(0.3^2 + 0.04^2) > 30%


def test_the_site_shows_a_flagged_run_with_its_warning():
    from experiments import pages, report
    from tools import gen_docs

    runs = report.load_runs(harness.RESULTS)
    clean = runs["latency"]["cpu"]
    flagged = json.loads(json.dumps(clean))
    flagged["conditions"] = harness.judge(
        [timed_task(runnable=[2, 3])], threads=1, cores=2, on_gpu=False, load=LOAD
    )
    warning = "flagged: load 2.5 runnable threads on 2 cores"

    page = "\n".join(pages.latency_lines(flagged))
    assert '!!! warning "Flagged' in page and f"    - {warning[9:]}" in page
    assert "**flagged**" not in "\n".join(pages.latency_lines(clean))
    index = pages.runs_table([clean, flagged], {"latency": "latency.md"})
    assert "not flagged" in index[2] and warning in index[3] and "⚠ e2e_speedup" in index[3]
    assert pages.where(flagged)["flagged"] == warning and pages.where(clean)["flagged"] == ""

    evidence = {"latency": {"cpu": flagged["evidence"]}}
    quoted = gen_docs.flag(evidence, {"latency": {"cpu": pages.where(flagged)}})["latency"]["cpu"]
    speedup = quoted["e2e_speedup_vs_hf_eager"]
    assert gen_docs._ratio(speedup) == f"{speedup:.3g}× (**⚠ {warning}**)"
    assert gen_docs._value(speedup).endswith(f"(**⚠ {warning}**)")
    assert quoted["target_workload"] == "10s_b1"  # text stays text


def test_a_flagged_run_makes_the_check_inconclusive():
    from experiments.check import AGREE, DRIFT, INCONCLUSIVE, verdict

    clean = judge([timed_task()])
    busy = judge([timed_task(runnable=[6, 7])])
    agree, drift = [{"agrees": True}], [{"agrees": True}, {"agrees": False}]
    assert verdict(agree, clean, clean)[0] == AGREE
    assert verdict(drift, clean, clean) == (
        DRIFT,
        "DRIFT: a headline ratio drifts beyond both runs' spread under clean conditions: the "
        "result did not reproduce",
    )
    status, sentence = verdict(agree, clean, busy)  # agreement within a noisy run's spread
    assert status == INCONCLUSIVE
    assert sentence.endswith("but the new run is flagged (load 6.5 runnable threads on 2 cores)")
    assert verdict(drift, busy, clean)[0] == INCONCLUSIVE
