"""torch.export of CosMo's media encoder (vision tower + resampler) and of one decoding step with cross-attention."""

import pytest
import torch
from tiny_configs import MEDIA_ID, tiny_cosmo_config

from cosmo_vl.modeling import CosmoForConditionalGeneration
from cosmo_vl.modeling.compat import CACHE_NAME
from cosmo_vl.modeling.modeling_cosmo import CosmoDecodeStep, CosmoMediaEncoder

export = pytest.importorskip("torch.export")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CosmoForConditionalGeneration(tiny_cosmo_config(cross_attention_gate_init=1.0)).eval()


def test_media_encoder_exports(model):
    pixels = torch.randn(2, 2, 1, 3, 16, 16)  # (B, M, F, C, H, W)
    encoder = CosmoMediaEncoder(model).eval()
    with torch.no_grad():
        program = torch.export.export(encoder, (pixels,), strict=False)
        exported = program.module()(pixels)
        eager = model.model.encode_media(pixels)
        # The masked path (explicit all-true masks) is the independent reference of the dense one.
        masked = model.model.encode_media(pixels, torch.ones(2, 2, dtype=torch.bool))
    torch.testing.assert_close(exported[0], eager.latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(exported[1], eager.contrastive_latents, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager.latents, masked.latents, atol=1e-5, rtol=1e-5)


def test_decode_step_exports(model):
    ids = torch.tensor([[1, MEDIA_ID, 11, 12, MEDIA_ID, 13], [1, 1, MEDIA_ID, 21, 22, 23]])
    pixels = torch.randn(2, 2, 1, 3, 16, 16)
    media_mask = torch.tensor([[True, True], [True, False]])
    ids[1, 0] = 0
    mask = torch.tensor([[1] * 6, [0] + [1] * 5])
    with torch.no_grad():
        prompt = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, media_mask=media_mask, use_cache=True)
        cache = getattr(prompt, CACHE_NAME)
        keys = tuple(layer.keys for layer in cache.layers)
        values = tuple(layer.values for layer in cache.layers)
        visual = prompt.visual_cache
        step_ids = torch.tensor([[30], [31]])
        step_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
        step_index = (ids == MEDIA_ID).sum(-1, keepdim=True)  # (B, 1) latest media of the new token
        args = (step_ids, step_mask, step_index, visual.latents, visual.media_mask, keys, values)
        step = CosmoDecodeStep(model).eval()
        eager_logits, eager_keys, _ = step(*args)
        program = torch.export.export(step, args, strict=False)
        logits, new_keys, new_values = program.module()(*args)
        # Independent reference: the whole sequence in one forward without cache.
        full = model(input_ids=torch.cat([ids, step_ids], 1), attention_mask=step_mask, pixel_values=pixels,
                     media_mask=media_mask, use_cache=False).logits[:, -1]
    torch.testing.assert_close(logits, eager_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(new_keys[0], eager_keys[0], atol=1e-5, rtol=1e-5)
    assert new_keys[0].shape[2] == ids.shape[1] + 1 and new_values[-1].shape[2] == ids.shape[1] + 1
    torch.testing.assert_close(logits[0], full[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], full[1], atol=1e-4, rtol=1e-4)
