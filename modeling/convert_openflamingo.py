"""Convert OpenFlamingo (PyPI `open-flamingo` 2.0.1) and CosMo reference checkpoints into `CosmoForConditionalGeneration`.

Both source layouts wrap an open_clip ViT, a Perceiver resampler and a Hugging Face causal LM whose decoder layers are
replaced by `<layer>.{gated_cross_attn_layer, decoder_layer}` pairs:

    OpenFlamingo                                        CosMo reference (showlab/cosmo)
    vision_encoder.<open_clip visual>                    vision_encoder.visual.<open_clip visual> (+ unused text tower)
    perceiver.latents (64, D)                            perceiver.latents (65, D): row 0 = contrastive latent
    lang_encoder.<layers>.{i}.decoder_layer.*            lang_model.<layers>.{i}.decoder_layer.*
    lang_encoder.<layers>.{i}.gated_cross_attn_layer.*   lang_model.<layers>.{i}.gated_cross_attn_layer.*
    (cross-attention before layer i when (i+1) % n == 0) (before layer i >= depth when (i - depth) % interval == 0)
    -                                                    img_to_latents / text_to_latents / temperature / text pooling

What maps to what (our names in brackets):
- open_clip visual -> transformers CLIP vision tower: `conv1` [embeddings.patch_embedding], `class_embedding`,
  `positional_embedding` [embeddings.position_embedding], `ln_pre` [pre_layrnorm], `transformer.resblocks.i`
  [encoder.layers.i] with the fused `attn.in_proj_{weight,bias}` (3D, D) split into q/k/v (both scale q by
  head_dim**-0.5, so the split is exact), `ln_1/ln_2` [layer_norm1/2], `mlp.c_fc/c_proj` [mlp.fc1/fc2], `ln_post`
  [post_layernorm]. `proj` (CLIP's image-text projection) is dropped: Flamingo reads the patch tokens.
- Flamingo feeds the resampler the patch tokens WITHOUT the CLS token: the converted config sets
  `vision_feature_select_strategy="default"`. open_clip up to (at least) 2.20, of the OpenFlamingo / CosMo
  training era, returns the tokens before `ln_post`, as our `last_hidden_state`; open_clip 3.x applies `ln_post`
  to them unless the ViT has `final_ln_after_pool=True`: a drift on the OpenFlamingo side we do not reproduce.
- resampler: `layers.i.0.*` [layers.i.attn.*], `layers.i.1.{0,1,3}` [layers.i.ff.{norm,fc1,fc2}], `norm`,
  `frame_embs` [frame_embeddings] and `media_time_embs` (M, 1, D) [media_position_embeddings] when present (absent in
  the releases: ours are then zero / disabled). Our resampler has one extra (contrastive) latent; for OpenFlamingo it
  stays at its initialisation and `resampler_extra_latents_as_keys=False` keeps the 64 LM latents independent of it,
  so they equal OpenFlamingo's. CosMo's latent 0 is its contrastive latent: it becomes our last one.
- gated cross-attention: `attn.{norm,to_q,to_kv,to_out}`, `attn_gate`, `ff.{0,1,3}` [ff.{norm,fc1,fc2}], `ff_gate`
  (both compute x + tanh(a) * xattn(x) and x + tanh(b) * ff(x), text attending only to its latest media). The layers
  that carry a block give `unimodal_depth` (the first one) and `cross_attention_interval`; OpenFlamingo's every-n
  layout is depth n - 1, interval n (n = 1: depth 0). CosMo's compress ratio keeps 8 heads and narrows them (scale
  still 64**-0.5): converted as heads of width inner/8 with the scale difference folded into `to_q`.
- the LM: `decoder_layer.` is removed from the names and the rest loads into the causal LM (`old_decoder_blocks.*`
  and `gated_cross_attn_layers.*`, the same tensors under a second name, are skipped). Checkpoints that hold only the
  trained parameters (the released ones) take the frozen towers from `vision_model` / `text_model`.
- CosMo's contrastive heads: `img_to_latents` [image_projection], `text_to_latents` [text_projection],
  `temperature` [logit_scale]; its text pooling (a Perceiver attention + FF over one learned latent) has no
  counterpart in our `AttentionPooling`: those keys are dropped and our pooler starts fresh (text embeddings need
  finetuning; the LM logits are unaffected).
Any other key is an error (`UnmappedKeysError`) listing it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

LAYOUTS = ("openflamingo", "cosmo")
# Special tokens each codebase adds to the LM tokenizer, in its order (the order fixes their ids).
SPECIAL_TOKENS = {
    "openflamingo": {"media": "<image>", "extra": ["<|endofchunk|>", "<image>"], "force_pad": False},
    "cosmo": {"media": "<visual>", "extra": ["<|endofchunk|>", "<visual>", "<|beginofchunk|>", "<human>", "<gpt>"],
              "force_pad": True},
}
_WRAPPER_INFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_XATTN_NAMES = {"attn_gate": "attn_gate", "ff_gate": "ff_gate", "ff.0.weight": "ff.norm.weight",
                "ff.0.bias": "ff.norm.bias", "ff.1.weight": "ff.fc1.weight", "ff.3.weight": "ff.fc2.weight"}
_XATTN_ATTN = ("norm.weight", "norm.bias", "to_q.weight", "to_kv.weight", "to_out.weight")
_PERCEIVER_ATTN = ("norm_media.weight", "norm_media.bias", "norm_latents.weight", "norm_latents.bias",
                   "to_q.weight", "to_kv.weight", "to_out.weight")
_FF = {"0.weight": "ff.norm.weight", "0.bias": "ff.norm.bias", "1.weight": "ff.fc1.weight", "3.weight": "ff.fc2.weight"}
_VISION_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_VISION_TOP = {"conv1.weight": "embeddings.patch_embedding.weight", "class_embedding": "embeddings.class_embedding",
               "positional_embedding": "embeddings.position_embedding.weight", "ln_pre.weight": "pre_layrnorm.weight",
               "ln_pre.bias": "pre_layrnorm.bias", "ln_post.weight": "post_layernorm.weight",
               "ln_post.bias": "post_layernorm.bias"}
_COSMO_TEXT_POOLING = ("text_latent", "text_learn_attnetion_layer.", "text_learn_ff.", "text_cls_norm.")


class UnmappedKeysError(ValueError):
    """The checkpoint holds keys the conversion does not know, or lacks keys it needs."""


@dataclass
class MappedCheckpoint:
    """A source state dict sorted into the parts of a CosMo model, all still in source precision.

    vision: CLIP-vision names (suffixes of the tower's own state-dict names); language_model: plain causal-LM names;
    resampler: names inside `PerceiverResampler` (`latents` (L, D) = the latents the LM sees, `contrastive_latent`
    (D,) when the source has one); cross_attention: decoder-layer index -> names inside `GatedCrossAttentionBlock`;
    heads: names inside `CosmoModel` (contrastive projections, logit scale); dropped: source key -> why it is unused.
    """

    layout: str
    vision: dict = field(default_factory=dict)
    language_model: dict = field(default_factory=dict)
    resampler: dict = field(default_factory=dict)
    cross_attention: dict = field(default_factory=dict)
    heads: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)

    @property
    def cross_attention_layer_ids(self) -> list[int]:
        return sorted(self.cross_attention)


# ------------------------------------------------------------------------------------------------- loading
def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.pt`/`.bin` (torch.save, possibly under "model_state_dict"/"state_dict"/"model") or a
    `.safetensors` file; DDP/FSDP/compile wrapper prefixes are removed."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors.")
    return normalize_keys(state)


def normalize_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove `module.` (DDP) prefixes and FSDP / activation-checkpointing / torch.compile infixes."""
    out = {}
    for key, value in state.items():
        for infix in _WRAPPER_INFIXES:
            key = key.replace(infix, "")
        out[key.removeprefix("module.")] = value
    return out


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    """"openflamingo" (`lang_encoder.*`) or "cosmo" (`lang_model.*`)."""
    if any(k.startswith("lang_encoder.") for k in state):
        return "openflamingo"
    if any(k.startswith("lang_model.") for k in state):
        return "cosmo"
    raise UnmappedKeysError(
        "Neither `lang_encoder.*` (OpenFlamingo) nor `lang_model.*` (CosMo) keys in the checkpoint; first keys: "
        + ", ".join(list(state)[:8])
    )


# ------------------------------------------------------------------------------------------------- mapping
def open_clip_visual_to_clip(visual: dict[str, torch.Tensor], unmapped: list, dropped: dict, prefix: str) -> dict:
    """open_clip `VisionTransformer` state -> transformers CLIP vision names; the fused qkv is split in three."""
    out = {}
    block = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
    for key, value in visual.items():
        if key in _VISION_TOP:
            out[_VISION_TOP[key]] = value
        elif key == "proj":
            dropped[prefix + key] = "CLIP image-text projection (Flamingo reads the patch tokens)"
        elif m := block.fullmatch(key):
            i, rest = m.groups()
            layer = f"encoder.layers.{i}."
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if rest.endswith("weight") else "bias"
                q, k, v = value.chunk(3, dim=0)  # (3D, ...) -> 3 x (D, ...)
                for name, part in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                    out[f"{layer}self_attn.{name}.{kind}"] = part
            else:
                module, _, param = rest.rpartition(".")
                if module in _VISION_BLOCK:
                    out[f"{layer}{_VISION_BLOCK[module]}.{param}"] = value
                else:
                    unmapped.append(prefix + key)
        else:
            unmapped.append(prefix + key)
    return out


def _map_perceiver(perceiver: dict, layout: str, unmapped: list, prefix: str) -> dict:
    out = {}
    layer = re.compile(r"layers\.(\d+)\.([01])\.(.+)")
    for key, value in perceiver.items():
        if key == "latents":
            if layout == "cosmo":  # (L+1, D): row 0 is CosMo's contrastive (CoCa-style cls) latent
                out["latents"], out["contrastive_latent"] = value[1:], value[0]
            else:
                out["latents"] = value
        elif key == "frame_embs":  # (F, D)
            out["frame_embeddings"] = value
        elif key == "media_time_embs":  # (M, 1, D)
            out["media_position_embeddings"] = value[:, 0]
        elif key in ("norm.weight", "norm.bias"):
            out[key] = value
        elif (m := layer.fullmatch(key)) and m.group(2) == "0" and m.group(3) in _PERCEIVER_ATTN:
            out[f"layers.{m.group(1)}.attn.{m.group(3)}"] = value
        elif m and m.group(2) == "1" and m.group(3) in _FF:
            out[f"layers.{m.group(1)}.{_FF[m.group(3)]}"] = value
        else:
            unmapped.append(prefix + key)  # e.g. q_norm / k_norm of CosMo's qv_norm option
    return out


def _map_cross_attention(block: dict, unmapped: list, prefix: str) -> dict:
    out = {}
    for key, value in block.items():
        if key in _XATTN_NAMES:
            out[_XATTN_NAMES[key]] = value
        elif key.startswith("attn.") and key[len("attn."):] in _XATTN_ATTN:
            out[key] = value
        else:
            unmapped.append(prefix + key)
    return out


def _split_language_model(lm: dict, prefix: str, unmapped: list, dropped: dict):
    """Source LM keys -> (plain causal-LM state, {layer: cross-attention state}). Keys of the duplicate
    `old_decoder_blocks.*` / `gated_cross_attn_layers.*` lists are used only where the in-layer name is absent."""
    wrapped = re.compile(r"(.+)\.(\d+)\.(decoder_layer|gated_cross_attn_layer)\.(.+)")
    plain, xattn, layers_path = {}, {}, None
    duplicates = {}
    for key, value in lm.items():
        key = key.removeprefix("base_model.model.")  # peft wrapper
        if key.startswith(("old_decoder_blocks.", "gated_cross_attn_layers.")):
            duplicates[key] = value
        elif m := wrapped.fullmatch(key):
            path, i, kind, rest = m.groups()
            layers_path = path
            if kind == "decoder_layer":
                plain[f"{path}.{i}.{rest}"] = value
            else:
                xattn.setdefault(int(i), {})[rest] = value
        elif key.endswith(("rotary_emb.inv_freq", ".masked_bias", ".attn.bias", ".attention.bias")):
            dropped[prefix + key] = "constant buffer, rebuilt by transformers"
        elif re.search(r"lora_[AB]|lora_embedding", key):
            unmapped.append(prefix + key)
        else:
            plain[key] = value
    dup = re.compile(r"(old_decoder_blocks|gated_cross_attn_layers)\.(\d+)\.(.+)")
    for key, value in duplicates.items():
        kind, i, rest = dup.fullmatch(key).groups()
        if kind == "gated_cross_attn_layers":
            target = xattn.setdefault(int(i), {})
            if rest in target:
                dropped[prefix + key] = "duplicate of the block inside the decoder layer"
            else:
                target[rest] = value
        elif layers_path is not None and f"{layers_path}.{i}.{rest}" in plain:
            dropped[prefix + key] = "duplicate of the wrapped decoder layer"
        else:
            plain[f"<layers>.{i}.{rest}"] = value  # resolved against the LM's layer list later
    xattn = {i: _map_cross_attention(block, unmapped, f"{prefix}<layer {i}>.gated_cross_attn_layer.")
             for i, block in xattn.items()}
    return plain, xattn


def map_checkpoint(state: dict[str, torch.Tensor], layout: str | None = None) -> MappedCheckpoint:
    """Sort a source state dict into the parts of a CosMo model; raise `UnmappedKeysError` listing unknown keys."""
    state = normalize_keys(state)
    layout = layout or detect_layout(state)
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {LAYOUTS}.")
    out, unmapped = MappedCheckpoint(layout=layout), []
    vision_prefix = "vision_encoder." if layout == "openflamingo" else "vision_encoder.visual."
    lm_prefix = "lang_encoder." if layout == "openflamingo" else "lang_model."
    groups: dict[str, dict] = {"vision": {}, "perceiver": {}, "lm": {}}
    for key, value in state.items():
        if key.startswith(vision_prefix):
            groups["vision"][key[len(vision_prefix):]] = value
        elif key.startswith("perceiver."):
            groups["perceiver"][key[len("perceiver."):]] = value
        elif key.startswith(lm_prefix):
            groups["lm"][key[len(lm_prefix):]] = value
        elif layout == "cosmo" and key.startswith("vision_encoder."):
            out.dropped[key] = "open_clip text tower / logit scale (unused by CosMo)"
        elif layout == "cosmo" and key == "img_to_latents.to_latents.weight":
            out.heads["image_projection.proj.weight"] = value
        elif layout == "cosmo" and key == "text_to_latents.to_latents.weight":
            out.heads["text_projection.proj.weight"] = value
        elif layout == "cosmo" and key == "temperature":
            out.heads["logit_scale.value"] = value.reshape(1)
        elif layout == "cosmo" and key.startswith(_COSMO_TEXT_POOLING):
            out.dropped[key] = "CosMo text pooling (latent attention + FF): no counterpart, our pooler starts fresh"
        else:
            unmapped.append(key)
    out.vision = open_clip_visual_to_clip(groups["vision"], unmapped, out.dropped, vision_prefix)
    out.resampler = _map_perceiver(groups["perceiver"], layout, unmapped, "perceiver.")
    out.language_model, out.cross_attention = _split_language_model(groups["lm"], lm_prefix, unmapped, out.dropped)
    if unmapped:
        raise UnmappedKeysError(
            f"{len(unmapped)} key(s) of the {layout} checkpoint have no counterpart in CosMo:\n  "
            + "\n  ".join(sorted(unmapped)[:60])
            + ("\n  ..." if len(unmapped) > 60 else "")
            + "\n(LoRA weights must be merged first; qv_norm / LayerScale / attention-pooled ViTs are not supported.)"
        )
    if not out.resampler:
        raise UnmappedKeysError("The checkpoint has no `perceiver.*` (resampler) weights.")
    if not out.cross_attention:
        raise UnmappedKeysError(f"The checkpoint has no `{lm_prefix}...gated_cross_attn_layer.*` weights.")
    return out


# ------------------------------------------------------------------------------------------ config inference
def infer_layout_config(
    mapped: MappedCheckpoint,
    cross_attention_heads: int = 8,
    source_cross_attention_head_dim: int = 64,
    resampler_heads: int = 8,
) -> dict:
    """CosmoConfig keyword arguments implied by the checkpoint's shapes and cross-attention placement.

    Head counts are not visible in the weights: both codebases use 8 (`cross_attention_heads`, `resampler_heads`);
    `source_cross_attention_head_dim` is the `dim_head` the source scaled its scores with (64).
    """
    ids = mapped.cross_attention_layer_ids
    # A single block (e.g. OpenFlamingo's every-n with n >= layers / 2) fits any interval: take n = depth + 1.
    depth, interval = ids[0], (ids[1] - ids[0] if len(ids) > 1 else ids[0] + 1)
    expected = list(range(depth, ids[-1] + 1, interval))
    if ids != expected:
        raise UnmappedKeysError(
            f"Cross-attention blocks sit before layers {ids}: not a regular (depth, interval) layout ({expected})."
        )
    block = mapped.cross_attention[ids[0]]
    inner, text_dim = block["attn.to_q.weight"].shape
    ff_inner = block["ff.fc1.weight"].shape[0]
    if inner % cross_attention_heads or ff_inner % text_dim:
        raise UnmappedKeysError(
            f"Cross-attention widths (attention {inner}, FF {ff_inner}, text {text_dim}) do not split into "
            f"{cross_attention_heads} heads and an integer FF multiple."
        )
    res = mapped.resampler
    num_latents, vision_dim = res["latents"].shape
    res_inner = res["layers.0.attn.to_q.weight"].shape[0]
    res_ff = res["layers.0.ff.fc1.weight"].shape[0]
    depth_r = 1 + max(int(k.split(".")[1]) for k in res if k.startswith("layers."))
    if res_inner % resampler_heads or res_ff % vision_dim:
        raise UnmappedKeysError(f"Resampler widths ({res_inner}, FF {res_ff}) do not fit {resampler_heads} heads.")
    kwargs = dict(
        unimodal_depth=depth,
        cross_attention_interval=interval,
        cross_attention_compress_ratio=1,
        cross_attention_heads=cross_attention_heads,
        cross_attention_head_dim=inner // cross_attention_heads,
        cross_attention_ff_mult=ff_inner // text_dim,
        num_latents=num_latents,
        resampler_depth=depth_r,
        resampler_heads=resampler_heads,
        resampler_head_dim=res_inner // resampler_heads,
        resampler_ff_mult=res_ff // vision_dim,
        max_num_media=res["media_position_embeddings"].shape[0] if "media_position_embeddings" in res else 0,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        resampler_extra_latents_as_keys="contrastive_latent" in res,
    )
    if "frame_embeddings" in res:
        kwargs["max_num_frames"] = res["frame_embeddings"].shape[0]
    if "image_projection.proj.weight" in mapped.heads:
        kwargs["contrastive_dim"] = mapped.heads["image_projection.proj.weight"].shape[0]
    # The source scaled scores by source_head_dim**-0.5, SDPA by head_dim**-0.5: fold the ratio into to_q.
    kwargs["_q_scale"] = math.sqrt((inner // cross_attention_heads) / source_cross_attention_head_dim)
    return kwargs


# ----------------------------------------------------------------------------------------------- building
def _tower_keys(build) -> set[str]:
    with torch.device("meta"):
        return set(build().state_dict())


def _resolve_suffixes(names: dict, keys: set[str], what: str) -> dict:
    """Map suffix names (e.g. `encoder.layers.0.mlp.fc1.weight`) onto the unique tower key ending with them."""
    out, unknown = {}, []
    for name, value in names.items():
        hits = [k for k in keys if k == name or k.endswith("." + name)]
        if len(hits) == 1:
            out[hits[0]] = value
        else:
            unknown.append(name)
    if unknown:
        raise UnmappedKeysError(f"{what}: no (unique) parameter for {sorted(unknown)[:20]}")
    return out


def _load_into(module: nn.Module, state: dict, what: str, allow_missing=()) -> None:
    own = module.state_dict()
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise UnmappedKeysError(f"{what}: shape mismatches:\n  " + "\n  ".join(bad[:20]))
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not any(re.fullmatch(p, k) for p in allow_missing)]
    if unexpected or missing:
        raise UnmappedKeysError(f"{what}: unexpected keys {sorted(unexpected)[:20]}, missing keys {sorted(missing)[:20]}")


def _vision_tower(vision_model: str, state: dict):
    """The vision tower: built from the config when the checkpoint holds all of it, else pretrained weights."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = AutoConfig.from_pretrained(vision_model)
    config = getattr(config, "vision_config", None) or config
    cls = MODEL_MAPPING[type(config)]
    if not state:
        return cls.from_pretrained(vision_model)
    if config.model_type != "clip_vision_model":
        raise UnmappedKeysError(
            f"The checkpoint holds an open_clip ViT; --vision_model must be a CLIP (vision) config, got {config.model_type}."
        )
    keys = _tower_keys(lambda: cls(config))
    state = _resolve_suffixes(state, keys, "vision tower")
    tower = cls(config) if set(state) == keys else cls.from_pretrained(vision_model)
    _load_into(tower, state, "vision tower", allow_missing=[re.escape(k) for k in keys - set(state)])
    return tower


def _module_name(root: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in root.named_modules() if m is module)


def _language_model(text_model: str, plain: dict):
    """The causal LM with the checkpoint's LM weights loaded (embeddings resized to the checkpoint's vocabulary):
    built from the config when the checkpoint holds all of it, else from the pretrained weights of `text_model`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .lm_split import find_decoder_layers

    config = AutoConfig.from_pretrained(text_model)
    with torch.device("meta"):
        probe = AutoModelForCausalLM.from_config(config)
    layers = find_decoder_layers(probe, config.num_hidden_layers)[2]
    plain = {k.replace("<layers>", _module_name(probe, layers), 1): v for k, v in plain.items()}
    embed = plain.get(_module_name(probe, probe.get_input_embeddings()) + ".weight")
    vocab_size = None if embed is None else embed.shape[0]  # OpenFlamingo / CosMo resized it to their tokenizer
    keys = set(probe.state_dict())
    covered = keys <= set(plain)
    if covered:
        if vocab_size is not None:
            config.vocab_size = vocab_size
        lm = AutoModelForCausalLM.from_config(config)
    else:
        lm = AutoModelForCausalLM.from_pretrained(text_model)
    if vocab_size is not None and lm.get_input_embeddings().num_embeddings != vocab_size:
        old = lm.get_input_embeddings().num_embeddings
        lm.resize_token_embeddings(vocab_size, mean_resizing=False)
        head = lm.get_output_embeddings()
        if head is not None and head.weight is not lm.get_input_embeddings().weight and vocab_size > old:
            with torch.no_grad():  # rows the checkpoint may not hold: the mean row, deterministically
                head.weight[old:] = head.weight[:old].mean(0)
    _load_into(lm, plain, "language model", allow_missing=[".*"] if not covered else [r".*inv_freq"])
    return lm


def build_cosmo(
    mapped: MappedCheckpoint,
    vision_model: str,
    text_model: str,
    tokenizer=None,
    cross_attention_heads: int = 8,
    source_cross_attention_head_dim: int = 64,
    resampler_heads: int = 8,
    **config_overrides,
):
    """A `CosmoForConditionalGeneration` holding the mapped weights (towers from `vision_model` / `text_model`)."""
    from .configuration_cosmo import CosmoConfig
    from .lm_split import MultimodalDecoderLayer
    from .modeling_cosmo import CosmoForConditionalGeneration

    kwargs = infer_layout_config(mapped, cross_attention_heads, source_cross_attention_head_dim, resampler_heads)
    q_scale = kwargs.pop("_q_scale")
    vision = _vision_tower(vision_model, mapped.vision)
    lm = _language_model(text_model, mapped.language_model)
    if tokenizer is not None:
        spec = SPECIAL_TOKENS[mapped.layout]
        kwargs["media_token_id"] = tokenizer.convert_tokens_to_ids(spec["media"])
        kwargs["endofchunk_token_id"] = tokenizer.convert_tokens_to_ids("<|endofchunk|>")
        if lm.config.pad_token_id is None:
            lm.config.pad_token_id = tokenizer.pad_token_id
    kwargs.update(config_overrides)
    config = CosmoConfig(vision_config=vision.config, text_config=lm.config, **kwargs)
    model = CosmoForConditionalGeneration(config, vision_model=vision, causal_lm=lm)
    _load_resampler(model.model.resampler, mapped.resampler)
    layers = {m.layer_idx: m for m in model.model.language_model.modules() if isinstance(m, MultimodalDecoderLayer)}
    for idx, block in mapped.cross_attention.items():
        block = dict(block)
        block["attn.to_q.weight"] = block["attn.to_q.weight"] * q_scale
        _load_into(layers[idx].cross_attention, block, f"cross-attention before layer {idx}")
    if mapped.heads:
        _load_into(model.model, mapped.heads, "contrastive heads", allow_missing=[".*"])
    return model


def _load_resampler(resampler: nn.Module, mapped: dict) -> None:
    state = {k: v for k, v in mapped.items() if k not in ("latents", "contrastive_latent", "frame_embeddings")}
    with torch.no_grad():
        n = mapped["latents"].shape[0]
        resampler.latents[:n] = mapped["latents"]
        if "contrastive_latent" in mapped:
            resampler.latents[n] = mapped["contrastive_latent"]
        if "frame_embeddings" in mapped:
            resampler.frame_embeddings.copy_(mapped["frame_embeddings"])
        else:
            resampler.frame_embeddings.zero_()  # the source adds none: zeros add nothing
    allow = [r"latents", r"frame_embeddings"] + ([] if "media_position_embeddings" in mapped else [r"media_position_embeddings"])
    _load_into(resampler, state, "resampler", allow_missing=allow)


def prepare_tokenizer(layout: str, tokenizer_path: str):
    """The LM tokenizer with the special tokens the source codebase added, by the same calls in the same order (so
    their ids match the checkpoint's embedding rows): OpenFlamingo `<|endofchunk|>`, `<image>` (+ `<PAD>` when
    there is no pad token); CosMo `<|endofchunk|>`, `<visual>`, `<|beginofchunk|>`, `<human>`, `<gpt>` + `<PAD>`."""
    from transformers import AutoTokenizer

    spec = SPECIAL_TOKENS[layout]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    tokenizer.add_special_tokens({"additional_special_tokens": spec["extra"]})
    if spec["force_pad"] or tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    return tokenizer


def convert(
    checkpoint: str | Path | dict,
    vision_model: str,
    text_model: str,
    layout: str | None = None,
    tokenizer: str | None = None,
    dtype: torch.dtype | None = None,
    **kwargs,
):
    """Convert a checkpoint file (or state dict) into a CosMo model.

    Returns (model, tokenizer, mapped): the tokenizer carries the source's special tokens (`media_token(mapped)` is
    its media placeholder). Raises `UnmappedKeysError` listing unknown or missing keys.
    """
    state = checkpoint if isinstance(checkpoint, dict) else load_state_dict(checkpoint)
    mapped = map_checkpoint(state, layout)
    text_tokenizer = prepare_tokenizer(mapped.layout, tokenizer or text_model)
    model = build_cosmo(mapped, vision_model, text_model, tokenizer=text_tokenizer, **kwargs)
    embeddings = model.get_input_embeddings().num_embeddings
    if len(text_tokenizer) > embeddings:
        raise UnmappedKeysError(
            f"The tokenizer has {len(text_tokenizer)} tokens but the converted LM {embeddings} embeddings: pass "
            "the tokenizer the checkpoint was trained with (--tokenizer)."
        )
    if dtype is not None:
        model = model.to(dtype)
    return model, text_tokenizer, mapped


def media_token(mapped: MappedCheckpoint) -> str:
    """The media placeholder of the source codebase (`<image>` for OpenFlamingo, `<visual>` for CosMo)."""
    return SPECIAL_TOKENS[mapped.layout]["media"]


def summary(mapped: MappedCheckpoint) -> str:
    """Human-readable account of what was mapped and what was dropped (and why)."""
    lines = [
        f"layout: {mapped.layout}",
        f"vision tower tensors: {len(mapped.vision)}; language-model tensors: {len(mapped.language_model)}",
        (f"resampler tensors: {len(mapped.resampler)}; cross-attention blocks before layers "
         f"{mapped.cross_attention_layer_ids}; contrastive-head tensors: {len(mapped.heads)}"),
    ]
    if mapped.dropped:
        reasons: dict[str, int] = {}
        for reason in mapped.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines.append("dropped: " + "; ".join(f"{n} x {r}" for r, n in reasons.items()))
    if "contrastive_latent" not in mapped.resampler:
        lines.append("left at initialisation: the contrastive latent and the contrastive heads (no source counterpart)")
    elif mapped.layout == "cosmo":
        lines.append("left at initialisation: the text attention pooler (CosMo's differs)")
    return "\n".join(lines)


__all__ = [
    "MappedCheckpoint",
    "UnmappedKeysError",
    "build_cosmo",
    "convert",
    "detect_layout",
    "infer_layout_config",
    "load_state_dict",
    "map_checkpoint",
    "media_token",
    "normalize_keys",
    "open_clip_visual_to_clip",
    "prepare_tokenizer",
    "summary",
]
