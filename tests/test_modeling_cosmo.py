"""CosMo model: masks, split LM, contrastive head, generation cache, freezing, LM families."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, CLIPVisionModel

from cosmo_vl.modeling import CosmoConfig, CosmoForConditionalGeneration, CosmoModel, trainable_parameters
from cosmo_vl.modeling.media_masks import media_attention_mask, media_index_from_ids

from tiny_configs import EOC_ID, MEDIA_ID, PAD_ID, VOCAB, tiny_cosmo_config

FAMILIES = ["llama", "opt", "gpt_neox", "mistral", "qwen2"]


def make_batch(media_positions, length=12, num_media=None, seed=0, image_size=16, frames=1):
    """ids with `<visual>` at the given positions per sample, and matching random pixel values."""
    g = torch.Generator().manual_seed(seed)
    b = len(media_positions)
    ids = torch.randint(5, VOCAB, (b, length), generator=g)
    ids[:, 0] = 1
    m = num_media or max(1, max(len(p) for p in media_positions))
    media_mask = torch.zeros(b, m, dtype=torch.bool)
    for i, positions in enumerate(media_positions):
        ids[i, positions] = MEDIA_ID
        media_mask[i, : len(positions)] = True
    pixel_values = torch.randn(b, m, frames, 3, image_size, image_size, generator=g)
    return ids, pixel_values, media_mask


def set_gates(model, value):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("attn_gate") or name.endswith("ff_gate"):
                param.fill_(value)


# ---------------------------------------------------------------------------------------------------- masks
def test_media_mask_matches_naive_reference():
    g = torch.Generator().manual_seed(1)
    b, t, m, num_latents = 3, 20, 4, 3
    ids = torch.randint(5, VOCAB, (b, t), generator=g)
    ids[0, [2, 7, 15]] = MEDIA_ID
    ids[1, [0]] = MEDIA_ID
    ids[2, [5, 6]] = MEDIA_ID
    media_mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)  # sample 2: 2nd padded
    allowed = media_attention_mask(media_index_from_ids(ids, MEDIA_ID), media_mask, num_latents)[:, 0]
    for i in range(b):
        for tok in range(t):
            latest = 0  # 1-based index of the latest media token at or before `tok`
            for j in range(tok + 1):
                if ids[i, j] == MEDIA_ID:
                    latest += 1
            for key in range(m * num_latents):
                media = key // num_latents + 1
                expected = latest > 0 and media == latest and bool(media_mask[i, media - 1])
                assert bool(allowed[i, tok, key]) == expected, (i, tok, key)


def test_tokens_before_media_and_padded_media_are_not_influenced():
    torch.manual_seed(0)
    model = CosmoForConditionalGeneration(tiny_cosmo_config()).eval()
    set_gates(model, 1.0)
    ids, px, mm = make_batch([[4], [6, 9]], num_media=3)
    base = model(input_ids=ids, pixel_values=px, media_mask=mm).logits
    px2 = px.clone()
    px2[:, :2] += torch.randn_like(px2[:, :2])  # change every real media item
    changed = model(input_ids=ids, pixel_values=px2, media_mask=mm).logits
    torch.testing.assert_close(changed[0, :4], base[0, :4])  # before the first media token
    torch.testing.assert_close(changed[1, :6], base[1, :6])
    assert not torch.allclose(changed[0, 4:], base[0, 4:])
    px3 = px.clone()
    px3[0, 1:] = 100.0  # padded media of sample 0
    px3[1, 2] = -50.0  # padded media of sample 1
    torch.testing.assert_close(model(input_ids=ids, pixel_values=px3, media_mask=mm).logits, base)


def test_media_token_count_mismatch_names_the_sample():
    model = CosmoForConditionalGeneration(tiny_cosmo_config()).eval()
    ids, px, mm = make_batch([[2], [3, 5]], num_media=2)
    mm[1, 1] = False
    with pytest.raises(ValueError, match=r"Sample 1 has 2 media tokens .* but 1 images/videos"):
        model(input_ids=ids, pixel_values=px, media_mask=mm)


# ---------------------------------------------------------------------------------------- split LM vs plain LM
@pytest.fixture(params=FAMILIES)
def backbones(request, tmp_path):
    """A tiny vision tower and a tiny causal LM of each family saved to disk, as pretrained towers would be."""
    torch.manual_seed(0)
    cfg = tiny_cosmo_config(request.param)
    CLIPVisionModel(cfg.vision_config).save_pretrained(tmp_path / "vision")
    AutoModelForCausalLM.from_config(cfg.text_config).save_pretrained(tmp_path / "text")
    return request.param, tmp_path / "vision", tmp_path / "text"


def _from_backbones(vision, text, **kw):
    keys = ("unimodal_depth", "cross_attention_heads", "cross_attention_head_dim", "num_latents", "resampler_depth",
            "resampler_heads", "resampler_head_dim", "max_num_frames", "contrastive_dim", "media_token_id",
            "endofchunk_token_id")
    ref = tiny_cosmo_config()
    kwargs = {k: getattr(ref, k) for k in keys}
    kwargs.update(kw)
    return CosmoForConditionalGeneration.from_backbones(vision=str(vision), text=str(text), **kwargs)


def test_from_backbones_loads_towers_and_zero_gates_keep_the_lm(backbones):
    family, vision_dir, text_dir = backbones
    model = _from_backbones(vision_dir, text_dir).eval()
    plain = AutoModelForCausalLM.from_pretrained(text_dir).eval()
    vision = CLIPVisionModel.from_pretrained(vision_dir)
    for name, tensor in vision.state_dict().items():
        torch.testing.assert_close(model.model.vision_model.state_dict()[name], tensor)
    ids, px, mm = make_batch([[3], [1]])
    attn = torch.ones_like(ids)
    ours = model(input_ids=ids, pixel_values=px, attention_mask=attn).logits
    reference = plain(input_ids=ids, attention_mask=attn).logits
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    set_gates(model, 0.5)
    assert not torch.allclose(model(input_ids=ids, pixel_values=px, attention_mask=attn).logits, reference)


def test_text_embedding_is_pooled_split_output_with_padding_mask(backbones):
    family, vision_dir, text_dir = backbones
    model = _from_backbones(vision_dir, text_dir).eval()
    plain = AutoModelForCausalLM.from_pretrained(text_dir).eval()
    ids, px, mm = make_batch([[1], [1]], length=10)
    attn = torch.ones_like(ids)
    attn[1, 7:] = 0
    ids[1, 7:] = PAD_ID
    out = model(input_ids=ids, pixel_values=px, attention_mask=attn)
    # Independent reference: hidden_states[d] of the plain LM is the output of layer d-1 (embeddings are [0]).
    split = plain(input_ids=ids, attention_mask=attn, output_hidden_states=True).hidden_states[model.config.unimodal_depth]
    heads = model.model
    expected = F.normalize(heads.text_projection.proj(heads.text_pooler(split, attn)), dim=-1)
    torch.testing.assert_close(out.text_embeds, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.get_text_features(ids, attn).pooler_output, out.text_embeds, rtol=1e-5, atol=1e-5)
    # Padding is never attended: extra pad tokens leave the embedding unchanged.
    ids_more = torch.cat([ids, torch.full((2, 3), PAD_ID)], dim=1)
    attn_more = torch.cat([attn, torch.zeros(2, 3, dtype=attn.dtype)], dim=1)
    more = model.get_text_features(ids_more, attn_more).pooler_output
    torch.testing.assert_close(more, out.text_embeds, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ contrastive
def test_contrastive_loss_matches_naive_reference():
    torch.manual_seed(0)
    model = CosmoForConditionalGeneration(tiny_cosmo_config()).eval()
    ids, px, mm = make_batch([[1], [2], [1], [3]], length=8, seed=3)
    out = model(input_ids=ids, pixel_values=px, attention_mask=torch.ones_like(ids), labels=ids)
    img, txt = out.image_embeds.double(), out.text_embeds.double()
    scale = math.exp(min(model.config.logit_scale_init_value, model.config.logit_scale_max))
    n = img.shape[0]
    total = 0.0
    for i in range(n):
        row_i = [scale * float(img[i].detach() @ txt[j].detach()) for j in range(n)]
        row_t = [scale * float(txt[i].detach() @ img[j].detach()) for j in range(n)]
        total += -(row_i[i] - math.log(sum(math.exp(v) for v in row_i)))
        total += -(row_t[i] - math.log(sum(math.exp(v) for v in row_t)))
    assert abs(out.contrastive_loss.item() - total / (2 * n)) < 1e-5
    assert abs(out.loss.item() - (out.lm_loss.item() + model.config.contrastive_loss_weight * total / (2 * n))) < 1e-5
    for emb in (out.image_embeds, out.text_embeds):
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(n))


def test_logit_scale_is_clamped_and_projections_bias_free():
    model = CosmoModel(tiny_cosmo_config(logit_scale_init_value=10.0))
    assert abs(model.logit_scale().item() - 100.0) < 1e-3
    assert model.text_projection.proj.bias is None and model.image_projection.proj.bias is None


def test_no_contrastive_term_on_interleaved_batches():
    model = CosmoForConditionalGeneration(tiny_cosmo_config())
    ids, px, mm = make_batch([[1, 5], [2, 6]])
    out = model(input_ids=ids, pixel_values=px, media_mask=mm, labels=ids)
    assert out.contrastive_loss is None and torch.equal(out.loss, out.lm_loss)
    with pytest.raises(ValueError, match="exactly one image or video per sample"):
        model(input_ids=ids, pixel_values=px, media_mask=mm, labels=ids, return_loss=True)


def test_image_embedding_averages_the_contrastive_latent_over_real_media():
    torch.manual_seed(0)
    model = CosmoModel(tiny_cosmo_config()).eval()
    _, px, _ = make_batch([[1, 2]], num_media=3)
    mm = torch.tensor([[True, True, False]])
    cache = model.encode_media(px, mm)
    manual = model.image_projection(cache.contrastive_latents[0, :2].mean(0, keepdim=True))
    torch.testing.assert_close(model.get_image_features(px, mm).pooler_output, manual)


# ------------------------------------------------------------------------------------------------- generation
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_with_cache_equals_without_and_encodes_media_once(family):
    torch.manual_seed(0)
    model = CosmoForConditionalGeneration(tiny_cosmo_config(family)).eval()
    set_gates(model, 1.0)
    ids, px, mm = make_batch([[1], [1, 4]], length=7, num_media=2, seed=5)
    calls = []
    hook = model.model.vision_model.register_forward_hook(lambda *a: calls.append(1))
    kwargs = dict(input_ids=ids, pixel_values=px, media_mask=mm, attention_mask=torch.ones_like(ids),
                  max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=PAD_ID)
    cached = model.generate(**kwargs, use_cache=True)
    assert len(calls) == 1
    uncached = model.generate(**kwargs, use_cache=False)
    hook.remove()
    assert torch.equal(cached, uncached)
    # Independent check: greedy decoding step by step with full forward passes.
    seq = ids
    for _ in range(6):
        logits = model(input_ids=seq, pixel_values=px, media_mask=mm, attention_mask=torch.ones_like(seq)).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, seq)


def test_generate_with_left_padding_and_beams():
    torch.manual_seed(0)
    model = CosmoForConditionalGeneration(tiny_cosmo_config()).eval()
    set_gates(model, 1.0)
    ids, px, mm = make_batch([[1], [1]], length=6, seed=2)
    left = ids.clone()
    left[1, 2:] = ids[1, :4]  # sample 1 = its first four tokens, left-padded by two
    left[1, :2] = PAD_ID
    attn = torch.ones_like(left)
    attn[1, :2] = 0
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=PAD_ID)
    batch = model.generate(input_ids=left, pixel_values=px, attention_mask=attn, **kw)
    solo = model.generate(input_ids=ids[1:, :4], pixel_values=px[1:], attention_mask=torch.ones_like(ids[1:, :4]), **kw)
    assert torch.equal(batch[1, -4:], solo[0, -4:])
    beams = model.generate(input_ids=ids, pixel_values=px, attention_mask=torch.ones_like(ids), num_beams=3, **kw)
    assert beams.shape == (2, 10)


# -------------------------------------------------------------------------------------------- freezing, grads
def test_gradients_reach_only_trainable_parts():
    torch.manual_seed(0)
    model = CosmoForConditionalGeneration(tiny_cosmo_config())  # towers frozen by default
    set_gates(model, 0.3)
    ids, px, mm = make_batch([[1], [2]])
    model(input_ids=ids, pixel_values=px, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
    for name, param in model.named_parameters():
        frozen_tower = name.startswith("model.vision_model.") or (
            (name.startswith("model.language_model.") and ".cross_attention." not in name) or name == "lm_head.weight"
        )
        assert param.requires_grad == (not frozen_tower), name
        if frozen_tower:
            assert param.grad is None, name
        else:
            assert param.grad is not None, name
    trainable, total, fraction = trainable_parameters(model)
    assert 0 < trainable < total and abs(fraction - trainable / total) < 1e-12


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    cfg = tiny_cosmo_config(freeze_language_model=False)
    model = CosmoForConditionalGeneration(cfg).train()
    set_gates(model, 0.5)
    model.config.text_config.attention_dropout = 0.0
    ids, px, mm = make_batch([[1], [2]])

    def grads():
        model.zero_grad()
        model(input_ids=ids, pixel_values=px, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable()  # non-reentrant: frozen towers keep their gradients flowing
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6)


def test_video_frames_and_padded_frames():
    torch.manual_seed(0)
    model = CosmoModel(tiny_cosmo_config()).eval()
    _, px, _ = make_batch([[1]], frames=3)
    fm = torch.tensor([[[True, True, False]]])
    a = model.get_image_features(px, frame_mask=fm).pooler_output
    px2 = px.clone()
    px2[0, 0, 2] = 7.0  # padded frame
    torch.testing.assert_close(model.get_image_features(px2, frame_mask=fm).pooler_output, a)
    # frame order matters through the temporal embeddings
    with torch.no_grad():
        model.resampler.frame_embeddings.normal_()
    swapped = px[:, :, [1, 0, 2]]
    assert not torch.allclose(model.get_image_features(swapped, frame_mask=fm).pooler_output,
                              model.get_image_features(px, frame_mask=fm).pooler_output)
    with pytest.raises(ValueError, match="max_num_frames"):
        model.get_image_features(torch.randn(1, 1, 5, 3, 16, 16))


def test_generation_stops_at_endofchunk():
    model = CosmoForConditionalGeneration(tiny_cosmo_config())
    assert EOC_ID in model.generation_config.eos_token_id and 2 in model.generation_config.eos_token_id


def test_config_validation_messages():
    with pytest.raises(ValueError, match="unimodal_depth=4 must be in"):
        tiny_cosmo_config(unimodal_depth=4)
    cfg = tiny_cosmo_config(cross_attention_interval=2, unimodal_depth=1)
    assert cfg.cross_attention_layer_ids == [1, 3]
    model = CosmoModel(cfg)
    layers = model.language_model.layers
    assert [i for i, layer in enumerate(layers) if layer.cross_attention is not None] == [1, 3]
    assert isinstance(CosmoConfig().text_config.num_hidden_layers, int)


def test_compress_ratio_shrinks_cross_attention():
    full = CosmoModel(tiny_cosmo_config())
    half = CosmoModel(tiny_cosmo_config(cross_attention_compress_ratio=2))
    n_full = sum(p.numel() for n, p in full.named_parameters() if ".cross_attention." in n)
    n_half = sum(p.numel() for n, p in half.named_parameters() if ".cross_attention." in n)
    assert n_half < 0.6 * n_full


def test_gate_init_option_opens_the_gates_and_survives_save_load(tmp_path):
    model = CosmoForConditionalGeneration(tiny_cosmo_config("llama", cross_attention_gate_init=0.5))
    gates = [p for n, p in model.named_parameters() if n.endswith(("attn_gate", "ff_gate"))]
    assert gates and all(torch.equal(g, torch.full((1,), 0.5)) for g in gates)
    model.save_pretrained(tmp_path)
    loaded = CosmoForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.config.cross_attention_gate_init == 0.5
    ids, pixel_values, media_mask = make_batch([[1]])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids, pixel_values=pixel_values, media_mask=media_mask).logits,
            model(input_ids=ids, pixel_values=pixel_values, media_mask=media_mask).logits,
        )


def test_spatial_embeddings_make_the_resampler_order_aware():
    from cosmo_vl.modeling.resampler import PerceiverResampler

    torch.manual_seed(0)
    x = torch.randn(2, 1, 5, 8)  # (N, F, P, D)
    perm = torch.tensor([4, 2, 0, 3, 1])
    plain = PerceiverResampler(8, 3, 1, 2, 4, 2, max_num_frames=2)
    # Attention pooling alone is blind to token order ...
    torch.testing.assert_close(plain(x), plain(x[:, :, perm]))
    spatial = PerceiverResampler(8, 3, 1, 2, 4, 2, max_num_frames=2, num_spatial_tokens=5)
    torch.nn.init.normal_(spatial.spatial_embeddings, std=1.0)
    # ... the spatial embeddings tell the same tokens in another order apart.
    assert not torch.allclose(spatial(x), spatial(x[:, :, perm]), atol=1e-4)
    with pytest.raises(ValueError, match="resampler_spatial_tokens to 4"):
        spatial(x[:, :, :4])
