"""CosMo and the shared vision-language blocks (torch + transformers only, relative imports only)."""

from .configuration_cosmo import CosmoConfig
from .modeling_cosmo import (
    CosmoDecodeStep,
    CosmoForConditionalGeneration,
    CosmoForZeroShotImageClassification,
    CosmoMediaEncoder,
    CosmoModel,
    CosmoModelOutput,
    CosmoOutput,
    CosmoPreTrainedModel,
    CosmoVisualCache,
    trainable_parameters,
)
from .configuration_pformer import PFormerConfig
from .modeling_pformer import PFormerModel, PFormerOutput, PFormerPreTrainedModel

__all__ = [
    "CosmoConfig",
    "CosmoDecodeStep",
    "CosmoForConditionalGeneration",
    "CosmoForZeroShotImageClassification",
    "CosmoMediaEncoder",
    "CosmoModel",
    "CosmoModelOutput",
    "CosmoOutput",
    "CosmoPreTrainedModel",
    "CosmoVisualCache",
    "PFormerConfig",
    "PFormerModel",
    "PFormerOutput",
    "PFormerPreTrainedModel",
    "trainable_parameters",
]

from .configuration_simvlg import SimVlgConfig
from .modeling_simvlg import (
    SimVlgForConditionalGeneration,
    SimVlgModel,
    SimVlgModelOutput,
    SimVlgOutput,
    SimVlgPreTrainedModel,
    SimVlgVisualTokens,
)
from .temporal_merging import TemporalAttention, TemporalTokenMerging
from .token_merging import MergeSchedule, apply_token_merging, remove_token_merging, token_merge_state

__all__ += [
    "MergeSchedule",
    "SimVlgConfig",
    "SimVlgForConditionalGeneration",
    "SimVlgModel",
    "SimVlgModelOutput",
    "SimVlgOutput",
    "SimVlgPreTrainedModel",
    "SimVlgVisualTokens",
    "TemporalAttention",
    "TemporalTokenMerging",
    "apply_token_merging",
    "remove_token_merging",
    "token_merge_state",
]
