"""The names transformers changed between the releases this package supports (5.23 up to the latest)."""

import dataclasses

from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import ModelOutput

# transformers 5.24 renamed the decoder cache argument and output field `past_key_values` -> `cache` (the old name
# warns until 5.40). Our code says `cache`; this is the name the installed release's decoders and `generate` use.
CACHE_NAME = "cache" if "cache" in {f.name for f in dataclasses.fields(BaseModelOutputWithPast)} else "past_key_values"


def cache_field(cls):
    """Class decorator, applied below `@dataclass`: names the output's `cache` field as the installed release does,
    so `generate` finds it (`outputs.past_key_values` before 5.24, `outputs.cache` from 5.24)."""
    if CACHE_NAME != "cache":
        cls.__annotations__ = {(CACHE_NAME if k == "cache" else k): v for k, v in cls.__annotations__.items()}
        setattr(cls, CACHE_NAME, cls.__dict__["cache"])
        delattr(cls, "cache")
    return cls


def accepts_old_cache_name(forward):
    """Decorator: from transformers 5.24 on, `past_key_values=` still works with transformers' own deprecation
    warning, as its decoders do (before 5.24 it is the current name and goes through `pop_cache`)."""
    if CACHE_NAME != "cache":
        return forward
    from transformers.utils.deprecation import deprecate_kwarg

    return deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")(forward)


def output_cache(outputs):
    """The cache of a decoder output, whatever the release calls it."""
    return getattr(outputs, CACHE_NAME, None)


def pop_cache(cache, kwargs: dict):
    """`cache` given under either name (callers written for either release); removes the old name from `kwargs`."""
    old = kwargs.pop("past_key_values", None)
    return old if cache is None else cache


def cache_kwargs(cache) -> dict:
    """The cache keyword argument of a transformers decoder call on the installed release."""
    return {CACHE_NAME: cache}


class NestedOutput(ModelOutput):
    """Base of outputs that hold an encoder's output (`image_outputs`): `to_tuple` turns it into a tuple too, as
    transformers' multimodal outputs do from 5.24 on (written here because 5.23 has no such base class)."""

    def to_tuple(self) -> tuple:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in (self[k] for k in self.keys()))
