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
    _done = True
