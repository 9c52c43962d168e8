"""cosmo-vl: Hub-native vision-language models built on transformers.

``import cosmo_vl`` registers every config, model and processor of the family with the Auto classes.
"""

import os as _os

# In a source checkout the sub-packages live at the repository root (pyproject maps them under
# ``cosmo_vl``); make them importable here too, so the tree runs the same installed or not.
_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if not _os.path.isdir(_os.path.join(_here, "modeling")) and _os.path.isfile(
    _os.path.join(_root, "modeling", "__init__.py")
):
    __path__.append(_root)  # noqa: F821 - module attribute of a package

from .registration import register_all  # noqa: E402

register_all()

from .modeling import (  # noqa: E402
    CosmoConfig,
    CosmoForConditionalGeneration,
    CosmoModel,
    CosmoOutput,
    CosmoPreTrainedModel,
    trainable_parameters,
)

from .remote_code import enable_remote_code  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CosmoConfig",
    "CosmoForConditionalGeneration",
    "CosmoModel",
    "CosmoOutput",
    "CosmoPreTrainedModel",
    "enable_remote_code",
    "trainable_parameters",
]
