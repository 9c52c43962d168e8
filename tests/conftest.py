import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# ------------------------------------------------------------------------------------------------------------------
# A deprecation that transformers reports (FutureWarning, or its "is deprecated" log lines) fails the test when our
# own code is what called into the deprecated API: the first frame outside transformers and torch's module machinery
# is in this project. Deprecations reached through another library (peft, accelerate) are that library's.
import logging  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

_ROOT = Path(__file__).resolve().parent.parent
_OURS = tuple(f"{_ROOT / d}/" for d in ("modeling", "processing", "trainers", "hub_cards", "cosmo_vl", "examples", "bench"))
_PASS_THROUGH = ("transformers", "torch.nn.modules", "torch.utils.checkpoint", "torch.autograd", "functools",
                 "contextlib", "huggingface_hub.dataclasses")


class DeprecatedCallFromProject(AssertionError):
    pass


def _project_caller(frame):
    """The first frame below transformers' deprecated API that is not pass-through machinery, if it is ours."""
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(_PASS_THROUGH) and name not in ("warnings", "logging", __name__):
            filename = frame.f_code.co_filename
            return f"{filename}:{frame.f_lineno}" if filename.startswith(_OURS) else None
        frame = frame.f_back
    return None


def _from_transformers(frame) -> bool:
    while frame is not None and frame.f_globals.get("__name__", "") in ("warnings", "logging", __name__):
        frame = frame.f_back
    return frame is not None and frame.f_globals.get("__name__", "").startswith("transformers")


_warn = warnings.warn


def _strict_warn(message, category=None, stacklevel=1, source=None, **kwargs):
    category = category or (type(message) if isinstance(message, Warning) else UserWarning)
    if issubclass(category, FutureWarning) and _from_transformers(sys._getframe(1)):
        caller = _project_caller(sys._getframe(1))
        if caller:
            raise DeprecatedCallFromProject(f"{caller} calls a deprecated transformers API: {message}")
    return _warn(message, category, stacklevel + 1, source, **kwargs)


class _DeprecationLogFilter(logging.Filter):
    def filter(self, record):
        if record.levelno >= logging.WARNING and "deprecated" in record.getMessage().lower():
            caller = _project_caller(sys._getframe(1))
            if caller:
                raise DeprecatedCallFromProject(f"{caller} uses a deprecated transformers API: {record.getMessage()}")
        return True


@pytest.fixture(autouse=True)
def _fail_on_deprecated_transformers_calls(monkeypatch):
    monkeypatch.setattr(warnings, "warn", _strict_warn)
    log_filter = _DeprecationLogFilter()
    handlers = logging.getLogger("transformers").handlers  # records of its child loggers reach these handlers
    for handler in handlers:
        handler.addFilter(log_filter)
    yield
    for handler in handlers:
        handler.removeFilter(log_filter)
