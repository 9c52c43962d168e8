"""Model-card templates and the code that fills them from huggingface_hub.ModelCardData."""
