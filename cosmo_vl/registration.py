"""Register the family's configs, models and processors with the transformers Auto classes."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)

_done = False


def register_all() -> None:
    """Idempotent: safe to call from every entry point."""
    global _done
    if _done:
        return
    from .modeling import CosmoConfig, CosmoForConditionalGeneration, CosmoForZeroShotImageClassification, CosmoModel

    AutoConfig.register("cosmo", CosmoConfig, exist_ok=True)
    AutoModel.register(CosmoConfig, CosmoModel, exist_ok=True)
    AutoModelForImageTextToText.register(CosmoConfig, CosmoForConditionalGeneration, exist_ok=True)
    AutoModelForCausalLM.register(CosmoConfig, CosmoForConditionalGeneration, exist_ok=True)
    AutoModelForZeroShotImageClassification.register(CosmoConfig, CosmoForZeroShotImageClassification, exist_ok=True)
    from .processing import CosmoProcessor

    AutoProcessor.register(CosmoConfig, CosmoProcessor, exist_ok=True)

    from .modeling import SimVlgConfig, SimVlgForConditionalGeneration, SimVlgModel

    AutoConfig.register("simvlg", SimVlgConfig, exist_ok=True)
    AutoModel.register(SimVlgConfig, SimVlgModel, exist_ok=True)
    AutoModelForImageTextToText.register(SimVlgConfig, SimVlgForConditionalGeneration, exist_ok=True)
    AutoModelForCausalLM.register(SimVlgConfig, SimVlgForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(SimVlgConfig, CosmoProcessor, exist_ok=True)
    from .modeling import PFormerConfig, PFormerModel

    AutoConfig.register("pformer", PFormerConfig, exist_ok=True)
    AutoModel.register(PFormerConfig, PFormerModel, exist_ok=True)
    _done = True
