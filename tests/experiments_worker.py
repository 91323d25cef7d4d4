"""Runs experiment scripts' main() one after another in one process, for test_experiments.py.

    python tests/experiments_worker.py MODULE ARG... -- MODULE ARG... -- ...

One interpreter start for all of them (imports cost seconds each), as `experiments.gpu_suite`
runs its parts; between two scripts Dynamo's state is reset. For each script a line
`experiments_worker: MODULE EXIT_CODE` (1 for an exception, whose traceback is printed), then
its seconds.
"""

import importlib
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the experiments package


def main(argv: list[str]) -> int:
    failed = 0
    while argv:
        cut = argv.index("--") if "--" in argv else len(argv)
        module, args, argv = argv[0], argv[1:cut], argv[cut + 1 :]
        start = time.perf_counter()
        try:
            code = importlib.import_module(f"experiments.{module}").main(args)
        except Exception:  # noqa: BLE001  (reported; the next script runs)
            traceback.print_exc()
            code = 1
        torch._dynamo.reset()
        seconds = time.perf_counter() - start
        print(f"experiments_worker: {module} {code}", flush=True)
        print(f"({module} took {seconds:.0f} s)", flush=True)
        failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
