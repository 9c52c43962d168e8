"""Model-card templates and the code that fills them from huggingface_hub.ModelCardData."""

from .cards import build_model_card, eval_results_from_json

__all__ = ["build_model_card", "eval_results_from_json"]
