"""Keep the attention implementation of towers whose configs a composite config shares."""

from contextlib import contextmanager

from transformers.configuration_utils import PreTrainedConfig


@contextmanager
def keep_tower_attention(config: PreTrainedConfig, kwargs: dict):
    """Around `PreTrainedConfig.__post_init__`: it sets `attn_implementation` (None unless one is passed) on every
    sub-config, and a built tower handed to the composite shares its config object, so that None would switch the
    tower to eager attention. Sub-configs keep their own implementation unless `attn_implementation` is given."""
    saved = {key: getattr(config, key, None) for key in config.sub_configs}
    saved = {key: sub._attn_implementation for key, sub in saved.items() if isinstance(sub, PreTrainedConfig)}
    yield
    if kwargs.get("attn_implementation") is not None:
        return
    for key, implementation in saved.items():
        sub = getattr(config, key)
        if sub._attn_implementation is None:
            sub._attn_implementation = implementation  # the setter recurses into the tower's own sub-configs
