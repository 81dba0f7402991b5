"""Loads the compiled op library, turning the usual failure modes into messages that say what to do."""
import importlib

import torch

REBUILD_HINT = "Rebuild it against this torch: `pip install --no-build-isolation -e .` (or `make test`)."


def load_library():
    try:
        info = importlib.import_module("restore_ext._build_info")
    except ImportError as e:
        raise ImportError(f"restore_ext was not built (no restore_ext/_build_info.py). {REBUILD_HINT}") from e
    built, running = info.TORCH_VERSION, torch.__version__
    if built.split("+")[0] != running.split("+")[0]:
        raise ImportError(
            f"restore_ext was built against torch {built} but torch {running} is installed; a C++ extension only "
            f"loads into the torch it was compiled with. {REBUILD_HINT}"
        )
    try:
        importlib.import_module("restore_ext._C")
    except ImportError as e:
        raise ImportError(f"restore_ext's compiled library failed to load ({e}). {REBUILD_HINT}") from e
