"""What every experiment shares: its command line, provenance, timing, progress, its run file.

A script is a `main()` that measures and writes one JSON per run:

    args = harness.parser(__doc__).parse_args(argv)
    run = harness.Run("bench_x", harness.scope_of(device, args.model), args, model="...")
    ... measure ...
    run.write(rows=[...], evidence={...}, not_measured={...}, headline=[...])

The file is `<out>/<experiment>/<scope>.json` (default out: results/runs; scratch/runs for
--quick), so a new run of the same scope replaces the old one and git keeps the history, except
that a flagged run never replaces a clean one unless --replace-clean says so (see `judge`).
`experiments/report.py` renders every run file into the site when the docs are built.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results" / "runs"
SCRATCH = REPO / "scratch" / "runs"
CONSTRAINTS = REPO / "constraints.txt"
CODE_PATHS = ("src", "experiments")  # the code whose uncommitted changes a run's hash covers
REFUSED = REPO / "scratch" / "refused"  # flagged runs that a clean run file kept out
# One torch thread per process unless --threads says otherwise: on a machine other jobs share,
# an OpenMP thread that waits at a barrier for one the OS has descheduled slows some modes far
# more than others, so their ratios move with the load (issue 28).
THREADS = 1
T = TypeVar("T")
# Hugging Face's own bars (writing and loading checkpoints) would interleave with the run's.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


# ----- command line, scope, run file ---------------------------------------------------------

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # --dtype


def parser(doc: str | None, device: bool = True, dtype: bool = True) -> argparse.ArgumentParser:
    """What every experiment takes (--out, --quick, --threads, --replace-clean,
    --compile-cache), --device where it can choose, and --dtype where it runs one dtype (parity
    runs each of its own)."""
    p = argparse.ArgumentParser(
        description=(doc or "").split("\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--out",
        type=Path,
        help=f"runs directory (default {RESULTS.relative_to(REPO)}"
        f", or {SCRATCH.relative_to(REPO)} with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: smaller and faster")
    p.add_argument(
        "--threads",
        type=_positive,
        help=f"torch threads (default {THREADS}: on a machine other jobs share, one thread "
        "per process keeps OpenMP threads from waiting on each other)",
    )
    p.add_argument(
        "--replace-clean",
        action="store_true",
        help="write a flagged run over a clean run file of the same scope (refused otherwise: "
        f"it goes to {REFUSED.relative_to(REPO)}/)",
    )
    p.add_argument(
        "--compile-cache",
        type=Path,
        help="Inductor's cache directory, shared with other runs (default: a fresh one per "
        "run, so every compile is cold); for smoke runs, e.g. the test suite's",
    )
    if device:
        p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    if dtype:
        p.add_argument(
            "--dtype",
            choices=list(DTYPES),
            help="weights and activations (default: bfloat16 on a GPU, float32 on a CPU)",
        )
    return p


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def device_of(args: argparse.Namespace) -> torch.device:
    """--device ("auto": a GPU if there is one); a script without --device runs on the CPU."""
    device = getattr(args, "device", "cpu")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def gpu_only(device: torch.device) -> bool:
    """The one switch for what only a GPU runs: CUDA graphs (`reduce-overhead`), CUDA timing,
    memory and kernel profiles. The rest (dtypes, casts, modes, stages) is the same code on a
    CPU, where the test suite runs it in bf16."""
    return device.type == "cuda"


def dtype_of(args: argparse.Namespace) -> torch.dtype:
    """--dtype, else bf16 on a GPU and fp32 on a CPU."""
    if getattr(args, "dtype", None):
        return DTYPES[args.dtype]
    return torch.bfloat16 if device_of(args).type == "cuda" else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cli_dtype(dtype: torch.dtype) -> str:
    """`dtype` as `granite-fms --default_dtype` names it."""
    from granite_fms.app.cli import DTYPES as CLI_DTYPES

    return {v: k for k, v in CLI_DTYPES.items()}[dtype]


def compile_cache(args: argparse.Namespace, fresh: Path) -> None:
    """Point Inductor's cache at --compile-cache, else at `fresh` (an empty directory)."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.compile_cache or fresh)


def scope_of(device: torch.device, model: str = "tiny") -> str:
    """`cpu` for the built-in default on CPU, else e.g. `gpu_8b` or `cpu_2b`."""
    kind = "gpu" if device.type == "cuda" else device.type
    return kind if model == "tiny" and kind == "cpu" else f"{kind}_{model.replace('3.3-', '')}"


class Run:
    """One run of an experiment: threads and provenance at the start, a JSON file at the end,
    with the `conditions` its timings were taken under (`judge`)."""

    def __init__(self, experiment: str, scope: str, args: argparse.Namespace, *, model: str):
        self.experiment, self.scope, self.model = experiment, scope, model
        self.quick = bool(getattr(args, "quick", False))
        self.threads_from = "--threads" if getattr(args, "threads", None) else "default"
        torch.set_num_threads(getattr(args, "threads", None) or THREADS)
        self.replace_clean = bool(getattr(args, "replace_clean", False))
        self.dtype = dtype_name(dtype_of(args)) if "dtype" in args else None
        self.compile_cache = (
            str(args.compile_cache) if getattr(args, "compile_cache", None) else None
        )
        self.out = args.out or (SCRATCH if self.quick else RESULTS)
        self.provenance = provenance()
        self.load_start = os.getloadavg()
        self._start = time.perf_counter()
        self._first_task = len(TIMED)

    def write(self, **payload) -> Path:
        """rows, evidence (flat), not_measured (key -> reason), headline (evidence keys), ..."""
        runtime = time.perf_counter() - self._start
        load = {"start": self.load_start, "end": os.getloadavg()}
        self.provenance["load_average"] = load
        device = self.provenance["device"]
        conditions = judge(
            TIMED[self._first_task :],
            threads=torch.get_num_threads(),
            cores=device.get("cpu_affinity") or device.get("cpu_count") or 1,
            on_gpu=device.get("gpu") is not None,
            load=load,
            timings=_has_timings(payload.get("rows")),
        )
        record = {
            "experiment": self.experiment,
            "scope": self.scope,
            "model": self.model,
            "quick": self.quick,
            "dtype": self.dtype,
            "compile_cache": self.compile_cache,  # None: fresh, every compile cold
            "runtime_s": round(runtime, 1),
            "provenance": self.provenance,
            "conditions": {"threads_from": self.threads_from, **conditions},
            **payload,
        }
        path = Path(self.out) / self.experiment / f"{self.scope}.json"
        path = write_record(record, path, self.replace_clean)
        print(f"{self.experiment}: wrote {path} in {runtime:.0f} s", flush=True)
        return path


def write_record(record: dict, path: Path, replace_clean: bool = False) -> Path:
    """Write a run file at `path`, unless it would put a flagged run over a clean one: then,
    unless `replace_clean`, the clean file stays and the new run goes to scratch/refused/,
    which is said on stdout. Returns the path written."""
    old = json.loads(path.read_text()) if path.is_file() else None
    new_flagged = record["conditions"]["flagged"]
    if old is not None and new_flagged and not conditions_of(old)["flagged"] and not replace_clean:
        kept, path = path, REFUSED / record["experiment"] / path.name
        print(
            f"{record['experiment']}: NOT replacing the clean run file {kept} with this flagged "
            f"run ({'; '.join(record['conditions']['reasons'])}); it goes to {path} instead. "
            "Rerun under quieter conditions, or pass --replace-clean to replace it.",
            flush=True,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=_jsonable) + "\n")
    return path


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path | torch.dtype | torch.device):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class Progress:
    """A bar over a run's steps, each weighted by its expected seconds (2 unloaded cores), so
    the time left is estimated from how fast this machine gets through them. `seconds` holds
    each step's measured time (runs record it, which is how the estimates are calibrated)."""

    def __init__(self, experiment: str, steps: dict[str, float]):
        self.steps, self.seconds = steps, {}
        total = sum(steps.values())
        print(f"{experiment}: {len(steps)} steps, about {total / 60:.1f} min on 2 unloaded cores")
        fmt = "{desc}: {percentage:3.0f}% | {elapsed} elapsed, about {remaining} left{postfix}"
        self.bar = tqdm(total=total, desc=experiment, bar_format=fmt, file=sys.stdout)
        self._last = time.perf_counter()

    def done(self, step: str) -> None:
        now = time.perf_counter()
        self.seconds[step] = round(now - self._last, 1)
        self._last = now
        self.bar.set_postfix_str(f"{step} took {self.seconds[step]:.0f} s", refresh=False)
        self.bar.update(self.steps[step])
        if len(self.seconds) == len(self.steps):
            self.bar.close()


# ----- provenance --------------------------------------------------------------------------


def _git(*args: str) -> str | None:
    from granite_fms import provenance as base

    return base._git(*args)


def code_diff_sha256() -> str | None:
    """sha256 of the uncommitted changes to src/ and experiments/ (`git diff HEAD` plus the
    untracked files there), None for a clean tree: with the commit, it names the code of a run."""
    diff = (_git("diff", "HEAD", "--binary", "--", *CODE_PATHS) or "").encode()
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS) or ""
    digest = hashlib.sha256(diff)
    files = sorted(f for f in untracked.splitlines() if "__pycache__" not in f)
    for name in files:
        digest.update(name.encode() + b"\0" + (REPO / name).read_bytes())
    return digest.hexdigest() if diff or files else None


def cpu_bf16_flags() -> list[str]:
    """The CPU's native bf16 instructions (AVX512-BF16, AMX) from /proc/cpuinfo: without them
    transformers' bf16 linear layers take slow kernels."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "flags":
                return sorted(set(value.split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return []


def cpu_has_native_bf16() -> bool:
    return bool(cpu_bf16_flags())


def pins() -> dict[str, str]:
    """The exact versions in constraints.txt (the toolchain the published results use)."""
    if not CONSTRAINTS.is_file():
        return {}
    out = {}
    for line in CONSTRAINTS.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.\-\[\]]+)\s*==\s*([^\s;#]+)", line)
        if m:
            out[re.sub(r"\[.*\]", "", m[1]).lower()] = m[2]
    return out


def provenance() -> dict:
    """`granite_fms.provenance` (machine, versions, git state with the hash of the whole diff),
    plus what the experiments need: the toolchain against constraints.txt, the CPU's native bf16
    and Torch's CPU capability, the content hashes of src/ and experiments/ (they survive
    rebases, unlike the commit) and the hash of their uncommitted changes."""
    from granite_fms import provenance as base

    p = base.provenance()
    pinned = pins()
    p["versions"].update({name: base._version(name) for name in pinned})
    # A package the session does not install (the docs tools in bench) is no mismatch.
    installed = {n: p["versions"][n] for n in pinned if p["versions"][n] is not None}
    mismatches = {
        n: {"pinned": pinned[n], "installed": v} for n, v in installed.items() if v != pinned[n]
    }
    digest = hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest() if pinned else None
    p["constraints"] = {"sha256": digest, "mismatches": mismatches}
    p["device"]["cpu_bf16_flags"] = cpu_bf16_flags()
    p["device"]["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    p["git"]["trees"] = {d: (_git("rev-parse", f"HEAD:{d}") or "").strip() for d in CODE_PATHS}
    p["git"]["code_diff_sha256"] = code_diff_sha256() if p["git"]["dirty"] else None
    return p


# ----- noise: the conditions timings were taken under ------------------------------------------

# A run is flagged (its ratios untrustworthy) when, over its timed calls:
LOAD_OVER_CORES = 1.0  # the mean count of runnable threads exceeds the cores it may use;
SPREAD_MAX = 0.10  # a task's median is known no better than +-10% (so a ratio of two: ~14%);
CPU_OVER_WALL_MIN = 0.8  # on CPU, the process got under 80% of a core while timed.
EXTEND = 2.0  # a task whose spread is above SPREAD_MAX gets up to twice its reps and budget


def machine_load() -> tuple[int | None, float]:
    """Runnable threads on the whole machine right now (ours included; /proc/loadavg, Linux)
    and the 1-minute load average. The count is read after each timed call: averaged over
    many, it is the load during the timings, without the 1-minute average's memory of the
    compiles before them."""
    load = os.getloadavg()[0]
    try:
        fields = Path("/proc/loadavg").read_text().split()
        return int(fields[3].split("/")[0]), load
    except (OSError, IndexError, ValueError):
        return None, load


def median_spread(samples: list[float]) -> float | None:
    """Relative half-width of a distribution-free 90% confidence interval of the median: the
    order statistics x_(j) and x_(n+1-j), j the largest with P(Binomial(n, 1/2) < j) <= 5%
    (below 5 samples no interval reaches 90%: min and max). None below 2 samples. The spread
    of a ratio of two medians is about the root of the sum of their squares (`ratio_spread`)."""
    x = np.sort(np.asarray(samples, dtype=float))
    n = x.size
    if n < 2:
        return None
    j, below = 1, 0.0
    for k in range(n):  # below = P(B <= k), in logs: 2**-n underflows for large n
        below += math.exp(
            math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) - n * math.log(2)
        )
        if below > 0.05:
            break
        j = max(j, k + 1)
    median = float(np.median(x))
    return float(x[n - j] - x[j - 1]) / 2 / median if median > 0 else None


def ratio_spread(*spreads: float | None) -> float | None:
    """The relative spread of a ratio (or product) of medians with these spreads."""
    if any(s is None for s in spreads):
        return None
    return math.sqrt(sum(s * s for s in spreads))


def judge(
    tasks: list[dict],
    *,
    threads: int,
    cores: int,
    on_gpu: bool,
    load: dict,
    timings: bool = True,
) -> dict:
    """A run's `conditions` from its timed tasks (`TIMED` entries), and whether they flag it.
    Without timed tasks, a run that holds timings (`timings`) is judged on its 1-minute load
    average at start and end, and one that holds none (counts, parity) is not judged."""
    ends = [load["start"][0], load["end"][0]]
    out = {
        "threads": threads,
        "cores": cores,
        "timed_tasks": len(tasks),
        "timed_calls": sum(t["calls"] for t in tasks),
        "load_1min": {"start": ends[0], "end": ends[1]},
        "thresholds": {
            "runnable_over_cores": LOAD_OVER_CORES,
            "spread": SPREAD_MAX,
            "cpu_over_wall": CPU_OVER_WALL_MIN if not on_gpu else None,
        },
    }
    reasons = []
    if tasks:
        readings = [n for t in tasks for n in t["runnable"]]
        loads = [x for t in tasks if t["load_1min"] for x in t["load_1min"]]
        wall = sum(t["wall_s"] for t in tasks)
        spread = max(tasks, key=lambda t: -1 if t["spread"] is None else t["spread"])
        slowest = min(tasks, key=lambda t: t["cpu_over_wall"] or math.inf)
        out.update(
            runnable=float(np.mean(readings)) if readings else None,
            cpu_over_wall=sum(t["cpu_s"] for t in tasks) / wall if wall > 0 else None,
            cpu_over_wall_lowest={"task": slowest["task"], "value": slowest["cpu_over_wall"]},
            spread=spread["spread"],
            spread_task=spread["task"],
        )
        out["load_1min"].update(
            timed_min=min(loads, default=None), timed_max=max(loads, default=None)
        )
        if out["runnable"] is not None and out["runnable"] > LOAD_OVER_CORES * cores:
            reasons.append(f"load {out['runnable']:.1f} runnable threads on {cores} cores")
        if out["spread"] is not None and out["spread"] > SPREAD_MAX:
            reasons.append(f"spread +-{out['spread']:.0%} ({out['spread_task']})")
        cpu = out["cpu_over_wall"]
        if not on_gpu and cpu is not None and cpu < CPU_OVER_WALL_MIN:
            reasons.append(f"cpu/wall {cpu:.2f}")
    elif timings:
        out["note"] = "no timed tasks: judged on the 1-minute load average at start and end"
        if max(ends) > LOAD_OVER_CORES * cores:
            reasons.append(f"1-minute load average {max(ends):.1f} on {cores} cores")
    else:
        out["note"] = "no timings: not judged"
    return {**out, "flagged": bool(reasons), "reasons": reasons}


def _has_timings(rows) -> bool:
    """Whether a run's rows hold times: a column in ms or s other than an audio length."""
    rows = [r for r in rows or [] if isinstance(r, dict)]
    return any(k.endswith(("_ms", "_s")) and k != "audio_s" for r in rows for k in r)


def conditions_of(run: dict) -> dict:
    """A run file's `conditions`; for one written before the harness measured them, judged
    from what it recorded (its 1-minute load average at start and end) and marked so."""
    if "conditions" in run:
        return run["conditions"]
    p = run["provenance"]
    load = p.get("load_average") or {"start": [0.0], "end": [0.0]}
    device = p.get("device") or {}
    cores = device.get("cpu_affinity") or device.get("cpu_count") or 1
    out = judge(
        [],
        threads=device.get("torch_threads"),
        cores=cores,
        on_gpu=bool(device.get("gpu")),
        load=load,
        timings=_has_timings(run.get("rows")),
    )
    return {**out, "recorded": False}


# ----- timing ------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_result(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """Seconds for one call, between device synchronisations, and what it returned."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def timed(fn: Callable[[], object], device: torch.device) -> float:
    return timed_result(fn, device)[0]


def summarize(samples_s: list[float]) -> dict:
    """Median, p10, p90, min and max in milliseconds, and the number of samples."""
    ms = np.asarray(samples_s) * 1e3
    p10, median, p90 = np.percentile(ms, [10, 50, 90])
    return {
        "median_ms": float(median),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "n": int(ms.size),
    }


class Stamps:
    """Synchronised timestamps taken inside a loop (e.g. once per generated token)."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, []

    def __call__(self) -> None:
        sync(self.device)
        self.times.append(time.perf_counter())

    def intervals(self) -> list[float]:
        return list(np.diff(self.times))


@dataclass
class Task:
    """One thing to time. `fn` returns None (the call is timed) or, with `inner`, its own list
    of samples in seconds (e.g. per-token intervals of one generation). `setup` runs untimed
    before every call. Calls stop at `max_reps`, or at `min_reps` once `budget_s` is spent,
    unless the median is still known no better than `SPREAD_MAX`: then they go on until it is,
    or until `EXTEND` times `max_reps` or `budget_s`. Every call also records the process CPU
    time and, after it, the machine's load (`machine_load`)."""

    fn: Callable[[], object]
    reps: tuple[int, int, float] = (3, 10, 5.0)  # min, max, budget seconds
    setup: Callable[[], None] | None = None
    inner: bool = False
    samples: list[float] = field(default_factory=list)
    calls: int = 0
    spent_s: float = 0.0
    cpu_s: float = 0.0
    runnable: list[int] = field(default_factory=list)
    load_1min: list[float] = field(default_factory=list)

    def done(self) -> bool:
        least, most, budget = self.reps
        if self.calls < least:
            return False
        if self.calls >= most * EXTEND or self.spent_s >= budget * EXTEND:
            return True
        spread = median_spread(self.samples)
        reps_done = self.calls >= most or self.spent_s >= budget
        return reps_done and (spread is None or spread <= SPREAD_MAX)

    def run_once(self, device: torch.device) -> None:
        if self.setup is not None:
            self.setup()
        cpu = time.process_time()
        seconds, out = timed_result(self.fn, device)
        self.cpu_s += time.process_time() - cpu
        self.samples.extend(out if self.inner else [seconds])
        self.spent_s += seconds
        self.calls += 1
        runnable, load = machine_load()
        self.load_1min.append(load)
        if runnable is not None:
            self.runnable.append(runnable)

    def conditions(self) -> dict:
        """What its calls ran under: the spread of its median, CPU over wall time, the mean
        count of runnable threads and the range of the 1-minute load average."""
        return {
            "spread": median_spread(self.samples),
            "cpu_over_wall": self.cpu_s / self.spent_s if self.spent_s > 0 else None,
            "runnable": float(np.mean(self.runnable)) if self.runnable else None,
            "load_1min": [min(self.load_1min), max(self.load_1min)] if self.load_1min else None,
        }


# Every task `round_robin` timed in this process, for the `conditions` of the run file.
TIMED: list[dict] = []


def round_robin(tasks: dict[Hashable, Task], device: torch.device, warm_up: bool = True) -> dict:
    """Warm every task up once, then one call of each unfinished task per round, so a slow
    period of a shared machine falls on every variant alike. Returns name -> summary, with the
    task's `conditions`."""
    if warm_up:
        for task in tasks.values():
            task.fn()
    while pending := [t for t in tasks.values() if not t.done()]:
        for task in pending:
            task.run_once(device)
    out = {}
    for name, t in tasks.items():
        out[name] = {"runs": t.calls, **summarize(t.samples), "conditions": t.conditions()}
        label = " ".join(map(str, name)) if isinstance(name, tuple) else str(name)
        TIMED.append(
            {
                "task": label,
                "calls": t.calls,
                "wall_s": t.spent_s,
                "cpu_s": t.cpu_s,
                "runnable": list(t.runnable),
                **{k: v for k, v in out[name]["conditions"].items() if k != "runnable"},
            }
        )
    return out


class PeakMemory:
    """Peak memory of a block: CUDA `max_memory_allocated`, or on CPU the process's peak
    resident set (VmHWM, reset through /proc/self/clear_refs; Linux only). `growth_mb` is the
    peak minus the level at entry."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "process_vm_hwm"
        self.peak_mb = self.growth_mb = None
        self._start = 0.0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self._start = _status_mb("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.peak_mb = _status_mb("VmHWM")
        self.growth_mb = self.peak_mb - self._start

    def row(self) -> dict:
        return {"peak_mb": self.peak_mb, "growth_mb": self.growth_mb, "kind": self.kind}


def _status_mb(name: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {name}")


def copy_bandwidth_gbs(device: torch.device, nbytes: int = 2**31, reps: int = 10) -> float:
    """Device memory bandwidth from a large device-to-device copy: (read + write) / time."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    samples = [timed(lambda: dst.copy_(src), device) for _ in range(reps)]
    return 2 * nbytes / float(np.median(samples)) / 1e9
