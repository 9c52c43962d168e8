"""Load an example or benchmark script (a file, not a package module) as a module for the tests."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, module_name: str):
    """Execute `ROOT/relative_path` as module `module_name`, registered in `sys.modules` (dataclasses and pickling
    look their module up by name)."""
    spec = importlib.util.spec_from_file_location(module_name, ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
