"""CosMo and the shared vision-language blocks (torch + transformers only, relative imports only)."""

from .configuration_cosmo import CosmoConfig
from .modeling_cosmo import (
    CosmoForConditionalGeneration,
    CosmoForZeroShotImageClassification,
    CosmoModel,
    CosmoModelOutput,
    CosmoOutput,
    CosmoPreTrainedModel,
    CosmoVisualCache,
    trainable_parameters,
)

__all__ = [
    "CosmoConfig",
    "CosmoForConditionalGeneration",
    "CosmoForZeroShotImageClassification",
    "CosmoModel",
    "CosmoModelOutput",
    "CosmoOutput",
    "CosmoPreTrainedModel",
    "CosmoVisualCache",
    "trainable_parameters",
]
