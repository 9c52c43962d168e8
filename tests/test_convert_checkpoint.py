"""OpenFlamingo / CosMo reference checkpoints -> cosmo-vl (`examples/convert_checkpoint.py`).

The first tests run on synthetic state dicts in this environment. The last ones build real tiny OpenFlamingo 2.0.1
models in the peer venv of bench/_peer_env.py (torchvision and open_clip must stay out of this one), convert their
state dicts and compare logits. Creating that venv from scratch took 167 s on the 2-core development machine, so the
test creates it when it is missing; COSMO_VL_PEER_TESTS=0 skips those tests.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, CLIPVisionModel, LlamaForCausalLM

import cosmo_vl  # noqa: F401 - registers the Auto classes
from cosmo_vl.modeling import convert_openflamingo as conv
from cosmo_vl.modeling.cross_attention import MaskedCrossAttention

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _peer_env  # noqa: E402
import _workload  # noqa: E402
from script_loading import load_script  # noqa: E402
from tiny_configs import tiny_text, tiny_vision  # noqa: E402

WORKER = Path(__file__).resolve().parent / "openflamingo_reference_worker.py"
SHAPE = {"vision": {"width": 128, "layers": 2, "patch": 8, "image": 32},
         "lm": {"hidden": 64, "layers": 4, "heads": 4, "intermediate": 128, "vocab": 64}}


def _script():
    return load_script("examples/convert_checkpoint.py", "convert_checkpoint")


# ------------------------------------------------------------------------------------ synthetic checkpoints
def open_clip_names(vision: CLIPVisionModel) -> dict:
    """A transformers CLIP vision tower's weights under open_clip's names (q/k/v fused into in_proj)."""
    sd = vision.state_dict()
    out = {
        "conv1.weight": sd["embeddings.patch_embedding.weight"],
        "class_embedding": sd["embeddings.class_embedding"],
        "positional_embedding": sd["embeddings.position_embedding.weight"],
        "ln_pre.weight": sd["pre_layrnorm.weight"], "ln_pre.bias": sd["pre_layrnorm.bias"],
        "ln_post.weight": sd["post_layernorm.weight"], "ln_post.bias": sd["post_layernorm.bias"],
        "proj": torch.randn(vision.config.hidden_size, 16),
    }
    for i in range(vision.config.num_hidden_layers):
        hf, oc = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{oc}attn.in_proj_{kind}"] = torch.cat([sd[f"{hf}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{oc}{theirs}.{kind}"] = sd[f"{hf}{ours}.{kind}"]
    return out


def gated_block(dim: int, media_dim: int, inner: int = 32, ff_mult: int = 4) -> dict:
    """One OpenFlamingo GatedCrossAttentionBlock's state (random, gates non-zero)."""
    return {
        "attn.norm.weight": torch.randn(dim), "attn.norm.bias": torch.randn(dim),
        "attn.to_q.weight": torch.randn(inner, dim), "attn.to_kv.weight": torch.randn(2 * inner, media_dim),
        "attn.to_out.weight": torch.randn(dim, inner), "attn_gate": torch.rand(1) + 0.5,
        "ff.0.weight": torch.randn(dim), "ff.0.bias": torch.randn(dim),
        "ff.1.weight": torch.randn(ff_mult * dim, dim), "ff.3.weight": torch.randn(dim, ff_mult * dim),
        "ff_gate": torch.rand(1) + 0.5,
    }


def perceiver(dim: int, latents: int = 4, depth: int = 2, inner: int = 32) -> dict:
    out = {"latents": torch.randn(latents, dim), "norm.weight": torch.randn(dim), "norm.bias": torch.randn(dim)}
    for i in range(depth):
        for n in ("norm_media", "norm_latents"):
            out[f"layers.{i}.0.{n}.weight"], out[f"layers.{i}.0.{n}.bias"] = torch.randn(dim), torch.randn(dim)
        out[f"layers.{i}.0.to_q.weight"] = torch.randn(inner, dim)
        out[f"layers.{i}.0.to_kv.weight"] = torch.randn(2 * inner, dim)
        out[f"layers.{i}.0.to_out.weight"] = torch.randn(dim, inner)
        out[f"layers.{i}.1.0.weight"], out[f"layers.{i}.1.0.bias"] = torch.randn(dim), torch.randn(dim)
        out[f"layers.{i}.1.1.weight"], out[f"layers.{i}.1.3.weight"] = torch.randn(4 * dim, dim), torch.randn(dim, 4 * dim)
    return out


def openflamingo_state(lm: LlamaForCausalLM, vision: CLIPVisionModel, every_n: int) -> dict:
    """The full state dict an OpenFlamingo around `lm` and `vision` has (duplicate names included)."""
    torch.manual_seed(1)
    state = {f"vision_encoder.{k}": v for k, v in open_clip_names(vision).items()}
    dim, media_dim = lm.config.hidden_size, vision.config.hidden_size
    state.update({f"perceiver.{k}": v for k, v in perceiver(media_dim).items()})
    for k, v in lm.state_dict().items():
        parts = k.split(".")
        if k.startswith("model.layers."):
            i, rest = parts[2], ".".join(parts[3:])
            state[f"lang_encoder.model.layers.{i}.decoder_layer.{rest}"] = v
            state[f"lang_encoder.old_decoder_blocks.{i}.{rest}"] = v
        else:
            state[f"lang_encoder.{k}"] = v
    for i in range(lm.config.num_hidden_layers):
        if (i + 1) % every_n == 0:
            for k, v in gated_block(dim, media_dim).items():
                state[f"lang_encoder.model.layers.{i}.gated_cross_attn_layer.{k}"] = v
                state[f"lang_encoder.gated_cross_attn_layers.{i}.{k}"] = v
    return state


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """A tiny Llama folder (with a tokenizer that has OpenFlamingo's special tokens) and a CLIP vision config."""
    root = tmp_path_factory.mktemp("towers")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(tiny_text("llama", tie=False))
    lm.save_pretrained(root / "lm")
    _workload.save_tokenizer(root / "lm", lm.config.vocab_size)
    vision = CLIPVisionModel(tiny_vision("clip"))
    vision.config.save_pretrained(root / "vision")
    return root, lm, vision


# ------------------------------------------------------------------------------------------------ mapping
def test_open_clip_qkv_split_and_names():
    d = 4
    visual = {"transformer.resblocks.0.attn.in_proj_weight": torch.arange(3 * d * d, dtype=torch.float).view(3 * d, d),
              "transformer.resblocks.0.attn.in_proj_bias": torch.arange(3 * d, dtype=torch.float),
              "transformer.resblocks.0.mlp.c_fc.weight": torch.ones(2, d), "ln_post.bias": torch.zeros(d),
              "proj": torch.ones(d, 2)}
    unmapped, dropped = [], {}
    out = conv.open_clip_visual_to_clip(visual, unmapped, dropped, "vision_encoder.")
    w = visual["transformer.resblocks.0.attn.in_proj_weight"]
    assert torch.equal(out["encoder.layers.0.self_attn.q_proj.weight"], w[:d])
    assert torch.equal(out["encoder.layers.0.self_attn.k_proj.weight"], w[d: 2 * d])
    assert torch.equal(out["encoder.layers.0.self_attn.v_proj.weight"], w[2 * d:])
    assert torch.equal(out["encoder.layers.0.self_attn.v_proj.bias"], torch.arange(2 * d, 3 * d, dtype=torch.float))
    assert "encoder.layers.0.mlp.fc1.weight" in out and "post_layernorm.bias" in out
    assert not unmapped and list(dropped) == ["vision_encoder.proj"]


@pytest.mark.parametrize("every_n, depth, interval", [(1, 0, 1), (2, 1, 2), (4, 3, 4)])
def test_openflamingo_layout_and_gates(towers, every_n, depth, interval):
    _, lm, vision = towers
    state = openflamingo_state(lm, vision, every_n)
    mapped = conv.map_checkpoint(state)
    assert mapped.layout == "openflamingo"
    assert mapped.cross_attention_layer_ids == list(range(every_n - 1, 4, every_n))
    block = mapped.cross_attention[every_n - 1]
    src = f"lang_encoder.model.layers.{every_n - 1}.gated_cross_attn_layer."
    assert torch.equal(block["attn_gate"], state[src + "attn_gate"])
    assert torch.equal(block["ff_gate"], state[src + "ff_gate"])
    assert torch.equal(block["ff.fc1.weight"], state[src + "ff.1.weight"])
    assert torch.equal(block["ff.norm.bias"], state[src + "ff.0.bias"])
    assert "model.layers.0.self_attn.q_proj.weight" in mapped.language_model
    assert all("duplicate" in r for k, r in mapped.dropped.items() if "old_decoder" in k or "gated_cross_attn_layers" in k)
    kwargs = conv.infer_layout_config(mapped, cross_attention_heads=2, resampler_heads=2)
    assert (kwargs["unimodal_depth"], kwargs["cross_attention_interval"]) == (depth, interval)
    assert kwargs["cross_attention_head_dim"] == 16 and kwargs["cross_attention_ff_mult"] == 4
    assert kwargs["resampler_depth"] == 2 and kwargs["num_latents"] == 4 and kwargs["max_num_media"] == 0
    assert kwargs["vision_feature_select_strategy"] == "default" and kwargs["resampler_extra_latents_as_keys"] is False


def test_unknown_and_unsupported_keys_are_listed(towers):
    _, lm, vision = towers
    state = openflamingo_state(lm, vision, 2)
    state["perceiver.layers.0.0.q_norm.weight"] = torch.ones(32)
    state["lang_encoder.model.layers.1.gated_cross_attn_layer.attn.k_norm.weight"] = torch.ones(32)
    state["text_projection.weight"] = torch.ones(2, 2)
    state["vision_encoder.transformer.resblocks.0.ls_1.gamma"] = torch.ones(32)
    with pytest.raises(conv.UnmappedKeysError) as err:
        conv.map_checkpoint(state)
    for key in ("perceiver.layers.0.0.q_norm.weight", "attn.k_norm.weight", "text_projection.weight", "ls_1.gamma"):
        assert key in str(err.value)
    with pytest.raises(conv.UnmappedKeysError, match="perceiver"):
        conv.map_checkpoint({k: v for k, v in openflamingo_state(lm, vision, 2).items() if not k.startswith("perceiver.")})


def test_cosmo_layout_contrastive_latent_compress_ratio_and_heads():
    torch.manual_seed(0)
    dim, media_dim, ratio = 32, 16, 2
    state = {f"vision_encoder.visual.{k}": v for k, v in {"ln_post.weight": torch.ones(media_dim)}.items()}
    state["vision_encoder.transformer.resblocks.0.ln_1.weight"] = torch.ones(8)  # CLIP text tower: unused
    state.update({f"perceiver.{k}": v for k, v in perceiver(media_dim, latents=5).items()})
    for i in (2, 3):  # unimodal depth 2, interval 1, 8 heads narrowed to 64 / ratio
        block = gated_block(dim, media_dim, inner=8 * 64 // ratio, ff_mult=4 // ratio)
        state.update({f"lang_model.model.decoder.layers.{i}.gated_cross_attn_layer.{k}": v for k, v in block.items()})
    state["lang_model.model.decoder.embed_tokens.weight"] = torch.randn(10, dim)
    state["img_to_latents.to_latents.weight"] = torch.randn(24, media_dim)
    state["text_to_latents.to_latents.weight"] = torch.randn(24, dim)
    state["temperature"] = torch.tensor([0.2])
    state["text_latent"], state["text_cls_norm.gamma"] = torch.randn(1, dim), torch.ones(dim)
    mapped = conv.map_checkpoint(state)
    assert mapped.layout == "cosmo"
    assert torch.equal(mapped.resampler["contrastive_latent"], state["perceiver.latents"][0])
    assert torch.equal(mapped.resampler["latents"], state["perceiver.latents"][1:])
    assert mapped.heads["logit_scale.value"].shape == (1,) and "text_latent" in mapped.dropped
    assert "vision_encoder.transformer.resblocks.0.ln_1.weight" in mapped.dropped
    kwargs = conv.infer_layout_config(mapped)
    assert (kwargs["unimodal_depth"], kwargs["cross_attention_interval"]) == (2, 1)
    assert (kwargs["cross_attention_heads"], kwargs["cross_attention_head_dim"], kwargs["cross_attention_ff_mult"]) == (8, 32, 2)
    assert kwargs["resampler_extra_latents_as_keys"] is True and kwargs["contrastive_dim"] == 24
    assert math.isclose(kwargs["_q_scale"], math.sqrt(32 / 64))


def test_folded_query_scale_reproduces_narrowed_heads():
    """CosMo's compress ratio keeps 8 heads of width 64/r but scales scores by 64**-0.5: ours, with the ratio folded
    into to_q, gives the same attention output."""
    torch.manual_seed(0)
    dim, media_dim, heads, head_dim, src_head_dim = 32, 16, 8, 32, 64
    x, media = torch.randn(2, 5, dim), torch.randn(2, 7, media_dim)
    ours = MaskedCrossAttention(dim, media_dim, heads, head_dim)
    q = ours.to_q(ours.norm(x)).view(2, 5, heads, head_dim).transpose(1, 2)
    k, v = (t.view(2, 7, heads, head_dim).transpose(1, 2) for t in ours.to_kv(media).chunk(2, dim=-1))
    attn = (q @ k.transpose(-1, -2) * src_head_dim**-0.5).softmax(-1)
    reference = ours.to_out((attn @ v).transpose(1, 2).reshape(2, 5, heads * head_dim))
    with torch.no_grad():
        ours.to_q.weight.mul_(math.sqrt(head_dim / src_head_dim))
    keys, values = ours.keys_values(media[:, None])
    out = ours(x, keys, values, torch.ones(2, 1, 5, 7, dtype=torch.bool))
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)


def test_unimodal_depth_zero_pools_the_token_embeddings():
    """Flamingo's layout (a block before layer 0) leaves no text-only layer: the text embedding pools the embeddings."""
    from cosmo_vl.modeling import CosmoForConditionalGeneration
    from tiny_configs import MEDIA_ID, tiny_cosmo_config

    model = CosmoForConditionalGeneration(tiny_cosmo_config(unimodal_depth=0)).eval()
    assert model.config.cross_attention_layer_ids == [0, 1, 2, 3]
    ids = torch.tensor([[1, MEDIA_ID, 7, 8, 9], [1, MEDIA_ID, 10, 11, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=attn, pixel_values=torch.randn(2, 3, 16, 16))
        heads = model.model
        embeds = model.get_input_embeddings()(ids)
        expected = torch.nn.functional.normalize(heads.text_projection.proj(heads.text_pooler(embeds, attn)), dim=-1)
        torch.testing.assert_close(out.text_embeds, expected)
        torch.testing.assert_close(model.get_text_features(ids, attn).pooler_output, expected)


def test_resampler_latents_can_ignore_the_contrastive_latent():
    from cosmo_vl.modeling.resampler import PerceiverResampler

    torch.manual_seed(0)
    x = torch.randn(2, 1, 5, 16)  # (N, F, P, D)
    for as_keys in (True, False):
        resampler = PerceiverResampler(16, 4, 2, 2, 8, 2, max_num_frames=1, extra_latents_as_keys=as_keys)
        before = resampler(x)
        with torch.no_grad():
            resampler.latents[4].normal_()
        after = resampler(x)
        assert not torch.allclose(before[:, 4], after[:, 4])
        assert torch.allclose(before[:, :4], after[:, :4]) is (not as_keys)


# ------------------------------------------------------------------------------ conversion end to end
def test_script_converts_saves_and_loads(towers, tmp_path):
    root, lm, vision = towers
    state = openflamingo_state(lm, vision, every_n=2)
    torch.save(state, tmp_path / "checkpoint.pt")
    code = _script().main([
        "--checkpoint", str(tmp_path / "checkpoint.pt"), "--vision_model", str(root / "vision"),
        "--text_model", str(root / "lm"), "--output", str(tmp_path / "out"),
        "--cross_attention_heads", "2", "--resampler_heads", "2",
    ])
    assert code == 0
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    config = model.config
    assert (config.unimodal_depth, config.cross_attention_interval) == (1, 2)
    assert config.cross_attention_layer_ids == [1, 3] and config.media_token_id == _workload.MEDIA
    sd = model.state_dict()
    fused = state["vision_encoder.transformer.resblocks.1.attn.in_proj_weight"]
    assert torch.equal(sd["model.vision_model.encoder.layers.1.self_attn.k_proj.weight"], fused[32:64])
    src = "lang_encoder.model.layers.3.gated_cross_attn_layer."
    xattn = "model.language_model.layers.3.cross_attention."
    assert torch.equal(sd[xattn + "attn_gate"], state[src + "attn_gate"])
    assert torch.equal(sd[xattn + "ff.fc2.weight"], state[src + "ff.3.weight"])
    assert torch.equal(sd["model.resampler.latents"][:4], state["perceiver.latents"])
    assert torch.equal(sd["model.resampler.layers.1.attn.norm_latents.bias"], state["perceiver.layers.1.0.norm_latents.bias"])
    assert torch.equal(sd["model.language_model.layers.2.layer.mlp.up_proj.weight"],
                       state["lang_encoder.model.layers.2.decoder_layer.mlp.up_proj.weight"])
    assert torch.equal(sd["lm_head.weight"], state["lang_encoder.lm_head.weight"])
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    assert processor.media_token == "<image>" and processor.media_token_id == config.media_token_id
    batch = processor(text=["<image> w7 w8<|endofchunk|>"], images=[[torch.rand(3, 16, 16)]], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**batch).logits).all()


def test_cosmo_reference_checkpoint_builds(towers):
    """CosMo layout end to end: contrastive latent moved last, compress ratio folded into to_q, contrastive heads,
    CosMo's special tokens (which grow the vocabulary) and `<visual>` as media token."""
    root, lm, vision = towers
    torch.manual_seed(2)
    dim, media_dim, vocab = lm.config.hidden_size, vision.config.hidden_size, lm.config.vocab_size + 5
    state = {f"vision_encoder.visual.{k}": v for k, v in open_clip_names(vision).items()}
    state["vision_encoder.token_embedding.weight"] = torch.randn(10, 8)  # CLIP text tower: dropped
    state.update({f"perceiver.{k}": v for k, v in perceiver(media_dim, latents=5).items()})
    for k, v in lm.state_dict().items():
        if k.startswith("model.layers."):
            i, rest = k.split(".", 3)[2:]
            k = f"model.layers.{i}.decoder_layer.{rest}"
        state[f"lang_model.{k}"] = torch.randn(vocab, dim) if k in ("model.embed_tokens.weight", "lm_head.weight") else v
    for i in (2, 3):  # unimodal depth 2, interval 1; 2 heads of 16 narrowed by ratio 2 -> inner 16
        block = gated_block(dim, media_dim, inner=16, ff_mult=2)
        state.update({f"lang_model.model.layers.{i}.gated_cross_attn_layer.{k}": v for k, v in block.items()})
    state["img_to_latents.to_latents.weight"] = torch.randn(24, media_dim)
    state["text_to_latents.to_latents.weight"] = torch.randn(24, dim)
    state["temperature"] = torch.tensor([0.2])
    state["text_latent"] = torch.randn(1, dim)
    state["text_learn_ff.1.weight"] = torch.randn(4 * dim, dim)
    model, tokenizer, mapped = conv.convert(state, str(root / "vision"), str(root / "lm"), cross_attention_heads=2,
                                            source_cross_attention_head_dim=16, resampler_heads=2)
    config, sd = model.config, model.state_dict()
    assert (config.unimodal_depth, config.cross_attention_heads, config.cross_attention_head_dim) == (2, 2, 8)
    assert config.resampler_extra_latents_as_keys and config.contrastive_dim == 24
    assert config.media_token_id == tokenizer.convert_tokens_to_ids("<visual>") and len(tokenizer) == vocab
    assert torch.equal(sd["model.resampler.latents"][4], state["perceiver.latents"][0])
    assert torch.equal(sd["model.resampler.latents"][:4], state["perceiver.latents"][1:])
    src = state["lang_model.model.layers.2.gated_cross_attn_layer.attn.to_q.weight"]
    torch.testing.assert_close(sd["model.language_model.layers.2.cross_attention.attn.to_q.weight"], src * 0.5**0.5)
    assert torch.equal(sd["model.image_projection.proj.weight"], state["img_to_latents.to_latents.weight"])
    assert math.isclose(sd["model.logit_scale.value"].item(), 0.2, rel_tol=1e-6)
    assert "text_latent" in mapped.dropped and "vision_encoder.token_embedding.weight" in mapped.dropped
    ids = torch.tensor([[1, config.media_token_id, 7, 8, config.endofchunk_token_id]])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 16, 16), return_loss=True)
    assert torch.isfinite(out.logits).all() and out.image_embeds.shape == (1, 24)


def test_script_reports_unmapped_keys(towers, tmp_path, capsys):
    root, lm, vision = towers
    state = openflamingo_state(lm, vision, every_n=1)
    state["perceiver.unknown_module.weight"] = torch.ones(2)
    torch.save(state, tmp_path / "checkpoint.pt")
    code = _script().main(["--checkpoint", str(tmp_path / "checkpoint.pt"), "--vision_model", str(root / "vision"),
                           "--text_model", str(root / "lm"), "--output", str(tmp_path / "out")])
    assert code == 2 and "perceiver.unknown_module.weight" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- against OpenFlamingo 2.0.1 (peer venv)
@pytest.fixture(scope="module")
def openflamingo_reference(tmp_path_factory):
    """Tiny OpenFlamingo models (cross-attention every layer and every 2nd layer) built in the peer venv."""
    if os.environ.get("COSMO_VL_PEER_TESTS") == "0":
        pytest.skip("COSMO_VL_PEER_TESTS=0: the OpenFlamingo peer-venv tests are switched off")
    python = _peer_env.ensure_peer_venv(_peer_env.DEFAULT_VENV, log=lambda msg: print(msg, file=sys.stderr))
    out = tmp_path_factory.mktemp("openflamingo")
    result = _peer_env.run_worker(python, WORKER, {"output_dir": str(out), "shape": SHAPE, "every_n": [1, 2]},
                                  timeout=900, log=lambda msg: print(msg, file=sys.stderr))
    if "error" in result:
        pytest.fail(f"OpenFlamingo worker failed:\n{result['error']}")
    assert result["versions"]["open-flamingo"] == "2.0.1"
    return out, result


def _logits(model_dir: Path, inputs: dict, **overrides) -> torch.Tensor:
    model = AutoModelForImageTextToText.from_pretrained(model_dir, **overrides).eval()
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                     pixel_values=inputs["pixel_values"]).logits


@pytest.mark.slow
@pytest.mark.parametrize("every_n, depth, interval", [(1, 0, 1), (2, 1, 2)])
def test_converted_openflamingo_gives_its_logits(openflamingo_reference, tmp_path, every_n, depth, interval):
    ref_dir, result = openflamingo_reference
    assert result[str(every_n)]["cross_attention_layers"] == list(range(every_n - 1, 4, every_n))
    code = _script().main([
        "--checkpoint", str(ref_dir / f"openflamingo_n{every_n}.pt"), "--vision_model", str(ref_dir / "vision"),
        "--text_model", str(ref_dir / "lm"), "--output", str(tmp_path / "cosmo"), "--layout", "openflamingo",
    ])
    assert code == 0
    inputs = torch.load(ref_dir / "inputs.pt")
    reference = torch.load(ref_dir / f"logits_n{every_n}.pt")
    real = inputs["attention_mask"].bool()
    logits = _logits(tmp_path / "cosmo", inputs)
    config = AutoModelForImageTextToText.from_pretrained(tmp_path / "cosmo").config
    assert (config.unimodal_depth, config.cross_attention_interval) == (depth, interval)
    diff = (logits - reference)[real].abs().max().item()
    print(f"every_n={every_n}: max |logits diff| = {diff:.2e}")
    assert diff <= 1e-4
    # The comparison is not vacuous: other images, the CLS token or a visible contrastive latent change the logits.
    blank = dict(inputs, pixel_values=torch.zeros_like(inputs["pixel_values"]))
    assert (_logits(tmp_path / "cosmo", blank) - reference)[real].abs().max() > 1e-2
    for override in ({"vision_feature_select_strategy": "full"}, {"resampler_extra_latents_as_keys": True}):
        assert (_logits(tmp_path / "cosmo", inputs, **override) - reference)[real].abs().max() > 1e-3


@pytest.mark.slow
def test_trainable_only_checkpoint_takes_the_lm_from_its_folder(openflamingo_reference, tmp_path):
    """Released checkpoints hold the trained parameters only (perceiver, cross-attention, input embeddings)."""
    ref_dir, _ = openflamingo_reference
    state = torch.load(ref_dir / "openflamingo_n1.pt")
    kept = {k: v for k, v in state.items()
            if not k.startswith("lang_encoder.") or "gated_cross_attn_layer." in k or k.endswith("embed_tokens.weight")}
    kept = {k: v for k, v in kept.items() if not k.startswith("lang_encoder.gated_cross_attn_layers.")}
    torch.save(kept, tmp_path / "trainable.pt")
    code = _script().main(["--checkpoint", str(tmp_path / "trainable.pt"), "--vision_model", str(ref_dir / "vision"),
                           "--text_model", str(ref_dir / "lm"), "--output", str(tmp_path / "cosmo")])
    assert code == 0
    inputs = torch.load(ref_dir / "inputs.pt")
    real = inputs["attention_mask"].bool()
    diff = (_logits(tmp_path / "cosmo", inputs) - torch.load(ref_dir / "logits_n1.pt"))[real].abs().max().item()
    assert diff <= 1e-4
