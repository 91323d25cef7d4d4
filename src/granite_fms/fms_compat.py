"""Workarounds for limitations of FMS, each with what it works around (checked on ibm-fms 1.13.1).

Every place where this package reaches around FMS's public API is here, so that a newer FMS
can retire them one by one:

* `get_model_directory`: `fms.models.get_model(arch, variant, model_path=DIR, source="hf")`
  passes the path to neither the model factory nor the checkpoint adapter, and then loads
  every `*.safetensors` in DIR. The factory reads the path from get_model's frame to check the
  directory first (`granite_fms.files.check_fms_directory`).
* `after_import`: FMS's `hf_pretrained` registry (`fms.models.hf.config_utils`) imports
  transformers, so importing it here would make `import granite_fms` import transformers.
  Registration is deferred until FMS imports that module itself.
"""

import importlib.abc
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from fms import models

CHECKED_FMS_VERSION = "1.13.1"


def get_model_directory() -> Path | None:
    """The `model_path` of the `get_model(..., source="hf")` call this runs under, or None."""
    frame = inspect.currentframe()
    while frame is not None and frame.f_code is not models.get_model.__code__:
        frame = frame.f_back
    if frame is None:
        return None
    model_path, source = frame.f_locals.get("model_path"), frame.f_locals.get("source")
    return Path(model_path) if model_path is not None and source == "hf" else None


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `callback(module)` right after the module `name` is first imported."""

    def __init__(self, name: str, callback: Callable[[ModuleType], None]):
        self.name, self.callback = name, callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            self.callback(module)

        spec.loader.exec_module = exec_module
        return spec


def after_import(name: str, callback: Callable[[ModuleType], None]) -> None:
    """`callback(module)` now if `name` is imported, else right after its first import."""
    if name in sys.modules:
        callback(sys.modules[name])
    else:
        sys.meta_path.insert(0, _AfterImport(name, callback))


__all__ = ["CHECKED_FMS_VERSION", "after_import", "get_model_directory"]
