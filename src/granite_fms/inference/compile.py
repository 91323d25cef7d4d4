"""How generation is compiled: one `CompileConfig`, the compiled regions, and the artifact
that ships them to another process.

    config = CompileConfig()                        # Inductor, symbolic shapes
    pipe = SpeechPipeline.from_pretrained(ckpt).compile(config)
    pipe.warmup(batch_sizes=[1, 8])                 # compiles now, with a progress bar
    pipe.save_compiled("granite.compiled")          # one file
    # any later process, same torch/triton/device:
    pipe = SpeechPipeline.from_pretrained(ckpt).compile(cache="granite.compiled")

A `Region` is one step of the generation loop (audio path, prefill, decode step, beam reorder)
compiled as one graph (`fullgraph=True`). With `symbolic=True` (the default) it marks the
sizes that vary between requests (batch rows, prompt length, cache length, frame count) as
symbolic on every call, so one graph serves every bucket; `False` compiles a graph per bucket.
Each compile is logged when it starts and when it ends, with its region, shapes and seconds.

The artifact is PyTorch's portable cache ("Mega-Cache": `torch.compiler.save_cache_artifacts`)
of everything Inductor generated in this process, with a header recording the torch, triton,
Python and device it was made with and the model and compile settings it belongs to. With
Inductor it also holds Dynamo's output (`torch._dynamo.config.caching_precompile`: each
region's bytecode and guards), so a region of the new process that was compiled before is not
traced: its graphs load when it is compiled. A region that meets a shape its loaded graphs do
not cover is compiled as without the artifact (from Inductor's caches where they hold it). A
header that does not match the running process is logged as a warning and the artifact skipped
(the graphs compile as without it).

Dynamo's saved guards require the inputs of a loaded graph to carry no dimension marks
(`mark_dynamic` sets attributes on a tensor that its saved guards do not record), so a loaded
region marks nothing until it compiles once more. Loaded guards drop identity checks (on
modules and functions: `caching_precompile`'s rule): a loaded graph trusts that the model's
code is the one it was made with, which the header's model key and torch version stand for.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import platform
import re
import sys
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx.experimental._config as fx_config
from torch._dynamo.utils import counters
from torch._inductor.runtime.cache_dir_utils import cache_dir
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from granite_fms.inference.quantize import SCHEMES

logger = logging.getLogger(__name__)

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
ARTIFACT_FORMAT = "granite-fms compiled artifact 2"
# Dynamo's saved output (`caching_precompile`, and the name counter `_past_loaded_names`
# moves: torch 2.14). Without them an artifact holds Inductor's caches only, and a process
# that loads it traces each region again.
PRECOMPILE = hasattr(torch._dynamo.config, "caching_precompile") and hasattr(
    torch._dynamo.bytecode_transformation, "_unique_id_counter"
)

# The tensors of one call and the dimensions of each that are symbolic.
Dims = Callable[..., Iterable[tuple[torch.Tensor, tuple[int, ...]]]]


@dataclass(frozen=True)
class CompileConfig:
    """How the generation loop is compiled.

    backend: `torch.compile` backend ("inductor"; "aot_eager" or "eager" to debug or count
        graphs; a callable backend cannot be saved as an artifact).
    mode: `torch.compile` mode of the decode step; None: "reduce-overhead" (the step in CUDA
        graphs, one capture per rows and cache-length bucket) on a GPU with Inductor, else
        Inductor's default.
    symbolic: batch rows, prompt length, cache length and frame count are symbolic sizes, so
        one graph per region serves every bucket; False: a graph per bucket.
    regional: compile each conformer block and each decoder layer once for the audio path and
        prefill (in place: `nn.Module.compile`) instead of the whole region; the decode step
        stays one graph either way, so it remains one CUDA graph on a GPU.
    cache: an artifact written by `save_artifact` (`SpeechPipeline.save_compiled`,
        `granite-fms compile`) to load before compiling.
    quantize: a scheme of `granite_fms.inference.quantize` applied to the model first.
    """

    backend: str | Callable = "inductor"
    mode: str | None = None
    symbolic: bool = True
    regional: bool = False
    cache: Path | None = None
    quantize: str | None = None

    def __post_init__(self):
        if not (isinstance(self.backend, str) or callable(self.backend)):
            raise TypeError(f"backend must be a name or a callable, got {self.backend!r}")
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode must be None or one of {MODES}, got {self.mode!r}")
        for name in ("symbolic", "regional"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.quantize is not None and self.quantize not in SCHEMES:
            raise ValueError(f"quantize must be None or one of {SCHEMES}, got {self.quantize!r}")
        if self.cache is not None:
            object.__setattr__(self, "cache", Path(self.cache))

    def decode_mode(self, device: torch.device) -> str | None:
        """The decode step's mode: CUDA graphs by default on a GPU (the only CUDA branch)."""
        if self.mode is None and device.type == "cuda" and self.backend == "inductor":
            return "reduce-overhead"
        return self.mode

    @property
    def precompiles(self) -> bool:
        """Whether Dynamo's output goes into the artifact (`PRECOMPILE`, with Inductor)."""
        return PRECOMPILE and self.backend == "inductor"

    def settings(self) -> dict[str, Any]:
        """What decides the graphs' code, as JSON (an artifact records it)."""
        if not isinstance(self.backend, str):
            raise ValueError("a compile with a callable backend cannot be saved; name one")
        fields = ("mode", "symbolic", "regional", "quantize")
        return {"backend": self.backend, **{name: getattr(self, name) for name in fields}}


def compile_config(config: CompileConfig | None, options: dict[str, Any]) -> CompileConfig:
    """`config`, or a `CompileConfig` of `options` (its fields as keywords); not both."""
    if config is not None and options:
        raise TypeError("pass a CompileConfig or its fields as keywords, not both")
    return config or CompileConfig(**options)


# ----- regions -------------------------------------------------------------------------------


class Region:
    """One step of the generation loop, compiled as one graph (or, regional, run eagerly
    around compiled blocks), its symbolic sizes marked on each call and its compiles logged.

    dims(*args): the tensors of a call and their symbolic dimensions (None: all static);
        regional, the blocks' own shapes decide (`compile_blocks`).
    limit: Dynamo's `recompile_limit` while the region runs (not for the process).
    precompile: record Dynamo's output for the artifact (`saves_dynamo_output`).
    loaded: its graphs came from an artifact (Dynamo's saved output): it marks no sizes until
        it compiles.
    """

    def __init__(
        self,
        name: str,
        fn: Callable,
        config: CompileConfig,
        *,
        limit: int,
        dims: Dims | None = None,
        mode: str | None = None,
        compiled: bool = True,
        precompile: bool = True,
    ):
        self.name, self.limit = name, limit
        self.dims = dims or None
        self.compiles, self.seconds = 0, 0.0
        self._shapes = ""
        self._started: float | None = None
        # Not in the modes with CUDA graphs: Dynamo's saved output was tried without them only.
        no_cuda_graphs = mode in (None, "default", "max-autotune-no-cudagraphs")
        self._precompile = config.precompiles and precompile and compiled and no_cuda_graphs
        options = dict(fullgraph=True, dynamic=False, backend=config.backend, mode=mode)
        hits = counters["dynamo_cache"]["dynamo_cache_hit"]
        with precompiling(self._precompile):
            self._fn = torch.compile(fn, **options) if compiled else fn
        self.loaded = counters["dynamo_cache"]["dynamo_cache_hit"] > hits
        if self.loaded:
            _past_loaded_names(fn)

    def __call__(self, *args):
        if self.dims is not None and not self.loaded:
            for tensor, dims in self.dims(*args):
                for dim in dims:
                    torch._dynamo.maybe_mark_dynamic(tensor, dim)
        self._shapes = describe(args)
        with ExitStack() as stack:
            stack.enter_context(precompiling(self._precompile))
            stack.enter_context(torch._dynamo.config.patch(recompile_limit=self.limit))
            # Sizes that happen to be equal (8 rows, 8 ...) must not share a symbol: a graph
            # traced so would guard on the equality and compile again when it fails.
            stack.enter_context(fx_config.patch(use_duck_shape=False))
            handler = torch._dynamo.callback_handler
            handler.register_start_callback(self._start)
            handler.register_end_callback(self._end)
            stack.callback(handler.remove_start_callback, self._start)
            stack.callback(handler.remove_end_callback, self._end)
            return self._fn(*args)

    def _start(self, event) -> None:
        self._started = time.perf_counter()
        self.loaded = False  # a shape its loaded graphs do not cover: marks from the next call
        cuda_graph = "CUDAGRAPH" in str(event.callback_trigger)
        what = "recording a CUDA graph of" if cuda_graph else "compiling"
        logger.info("%s %s for %s", what, self.name, self._shapes)

    def _end(self, event) -> None:
        seconds = time.perf_counter() - (self._started or time.perf_counter())
        if "CUDAGRAPH" not in str(event.callback_trigger):
            self.compiles += 1
            self.seconds += seconds
        logger.info("%s for %s took %.1f s", self.name, self._shapes, seconds)


class _DroppedGuards(logging.Filter):
    """Drops Dynamo's warning for each guard `caching_precompile` leaves out (dozens a graph)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "dropped with caching_precompile" not in record.getMessage()


@contextmanager
def precompiling(enabled: bool) -> Iterator[None]:
    """Dynamo's output recorded for the artifact, and loaded from it, while compiling (when
    `enabled`: Inductor regions)."""
    if not enabled:
        yield
        return
    guards, quiet = logging.getLogger("torch._dynamo.guards"), _DroppedGuards()
    guards.addFilter(quiet)
    try:
        with torch._dynamo.config.patch(caching_precompile=True):
            yield
    finally:
        guards.removeFilter(quiet)


def saves_dynamo_output(model: torch.nn.Module) -> bool:
    """Whether Dynamo's output of `model`'s regions can go into an artifact: not with tensor
    subclass weights (torchao's int8: torch 2.14 fails on their `empty_like`)."""
    return not any(is_traceable_wrapper_subclass(p) for p in model.parameters())


def _past_loaded_names(fn: Callable) -> None:
    """Move Dynamo's process-wide name counter past the globals a loaded graph installed in
    its function's module (named by the process that saved it): a later compile in that module
    would take one of those names and fail (torch 2.14: `CleanupHook.create` asserts)."""
    scope = sys.modules[torch._dynamo.eval_frame.innermost_fn(fn).__module__].__dict__
    pattern = re.compile(r"__builtins_dict___(\d+)")
    taken = [int(m.group(1)) for name in scope if (m := pattern.fullmatch(name))]
    counter = torch._dynamo.bytecode_transformation._unique_id_counter
    while taken and next(counter) < max(taken):
        pass


def describe(args: tuple) -> str:
    """Shapes of a call's tensors, e.g. "(4, 128, 64), 2 layers x (4, 2, 256, 32)"."""
    parts = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            parts.append(str(tuple(arg.shape)))
        elif isinstance(arg, list | tuple) and arg and isinstance(arg[0], tuple):
            parts.append(f"{len(arg)} layers x {tuple(arg[0][0].shape)}")
    return ", ".join(parts)


def compile_blocks(
    blocks: torch.nn.ModuleList, config: CompileConfig, dynamic: bool | None
) -> None:
    """Regional compilation: each block compiled in place, one graph for all of them per
    shape class (Dynamo reuses it: the parameters are graph inputs)."""
    for block in blocks:
        block.compile(fullgraph=True, dynamic=dynamic, backend=config.backend)


# ----- the artifact --------------------------------------------------------------------------


def environment(device: torch.device) -> dict[str, Any]:
    """What generated code depends on besides the graph: the artifact's compatibility key."""
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    if device.type == "cuda":
        index = device.index or 0
        name = torch.cuda.get_device_name(index)
        capability = ".".join(map(str, torch.cuda.get_device_capability(index)))
        target = f"cuda {name} (sm {capability})"
    else:
        target = f"{device.type} {platform.machine()} {torch.backends.cpu.get_cpu_capability()}"
    return {
        "torch": torch.__version__,
        "triton": triton,
        "python": platform.python_version(),
        "device": target,
    }


def model_key(model: torch.nn.Module) -> str:
    """sha256 of the model's parameter and buffer names, shapes and dtypes: the graphs'
    inputs (the values are not in the graphs)."""
    digest = hashlib.sha256()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}:{type(t).__name__};".encode())
    return digest.hexdigest()


def save_artifact(
    path: str | Path,
    model: torch.nn.Module,
    config: CompileConfig,
    device: torch.device,
    *,
    shapes: list[dict],
    since: float,
) -> Path:
    """Write what Inductor generated in this process as one artifact file; returns its path.

    The file holds PyTorch's portable cache (the graphs' FX graph, AOTAutograd and autotuning
    entries; with Inductor, each region's Dynamo output too) and the compiled C++ kernel
    libraries of Inductor's cache directory written since `since` (a timestamp): on CPU the
    portable cache leaves them out, and building them is most of a cold compile (on a GPU the
    Triton kernels are inside it).
    """
    with precompiling(config.precompiles):
        saved = torch.compiler.save_cache_artifacts()
    if PRECOMPILE:
        from torch._dynamo.package import DynamoCache

        DynamoCache.clear()  # written locally too: they belong to the artifact, loaded with it
    if saved is None:
        raise RuntimeError(
            "nothing to save: no graph was compiled with Inductor's caches in this process "
            "(compile and warm up first; TORCHINDUCTOR_FORCE_DISABLE_CACHES must be off)"
        )
    payload, info = saved
    root = Path(cache_dir())
    kernels = [f for f in root.glob("??/*") if f.is_file() and f.stat().st_mtime >= since - 1]
    header = {
        "format": ARTIFACT_FORMAT,
        "environment": environment(device),
        "model": model_key(model),
        "compile": config.settings(),
        "warmed_up": shapes,
        "artifacts": {kind: len(keys) for kind, keys in info.artifacts.items()},
        "kernel_files": len(kernels),
        "kernels_built_for": str(Path(torch.__file__).parent),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("header.json", json.dumps(header, indent=1) + "\n")
        archive.writestr("mega_cache.bin", payload)
        for f in kernels:
            archive.write(f, f"kernels/{f.relative_to(root).as_posix()}")
    logger.info(
        "saved %s (%.1f MB): %s, %d kernel files",
        path,
        path.stat().st_size / 2**20,
        header["artifacts"],
        len(kernels),
    )
    return path


def read_artifact(path: str | Path) -> tuple[dict, zipfile.ZipFile]:
    """(header, open archive) of an artifact file; ValueError naming the file if it is not
    one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"compile artifact {path} does not exist")
    try:
        archive = zipfile.ZipFile(path)
        header = json.loads(archive.read("header.json"))
        archive.getinfo("mega_cache.bin")
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not a granite-fms compile artifact ({e})") from e
    if not isinstance(header, dict) or header.get("format") != ARTIFACT_FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise ValueError(f"{path} is not a {ARTIFACT_FORMAT!r} (format: {found!r})")
    return header, archive


def load_artifact(
    path: str | Path, model: torch.nn.Module, config: CompileConfig, device: torch.device
) -> bool:
    """Fill Inductor's local caches from an artifact made for this model, settings and
    environment; True if loaded. A mismatch is logged as a warning naming what differs and
    the artifact skipped (False): the graphs then compile as without it."""
    header, archive = read_artifact(path)
    expected = {
        "environment": environment(device),
        "model": model_key(model),
        "compile": config.settings(),
    }
    differs = _differences(header, expected)
    if differs:
        logger.warning(
            "compile artifact %s skipped, it was made for another setup (%s); compiling instead",
            path,
            "; ".join(differs),
        )
        return False
    start = time.perf_counter()
    with archive:
        info = torch.compiler.load_cache_artifacts(archive.read("mega_cache.bin"))
        root = Path(cache_dir())
        for name in archive.namelist():
            target = root / name.removeprefix("kernels/")
            if name.startswith("kernels/") and ".." not in name and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(name))
                target.chmod(0o755 if target.suffix == ".so" else 0o644)
    loaded = {} if info is None else {k: len(v) for k, v in info.artifacts.items()}
    logger.info("loaded %s in %.1f s: %s", path, time.perf_counter() - start, loaded)
    if header.get("kernels_built_for") != str(Path(torch.__file__).parent):
        logger.info("its C++ kernels were built for torch at another path: they build again")
    return True


def _differences(header: dict, expected: dict) -> list[str]:
    out = []
    for key, want in expected.items():
        got = header.get(key)
        if isinstance(want, dict):
            got = got if isinstance(got, dict) else {}
            out += [f"{k} {got.get(k)!r}, here {v!r}" for k, v in want.items() if got.get(k) != v]
        elif got != want:
            out.append(f"{key}: made for another one")
    return out


__all__ = [
    "ARTIFACT_FORMAT",
    "CompileConfig",
    "Region",
    "compile_blocks",
    "compile_config",
    "environment",
    "load_artifact",
    "read_artifact",
    "save_artifact",
    "saves_dynamo_output",
]
