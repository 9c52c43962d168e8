"""Pictures of token merging: which patches ended up in the same token.

    from cosmo_vl.modeling import apply_token_merging
    from cosmo_vl.visualization import visualize_merges
    apply_token_merging(vision_model, r=13)
    visualize_merges(image, vision_model, image_processor, "merges.png")
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .modeling.token_merging import apply_token_merging, token_merge_state


def group_colours(n: int) -> np.ndarray:
    """`n` distinct RGB colours (uint8, (n, 3)): an odd multiplier is a bijection of 24-bit integers, so no two
    groups share a colour while neighbouring indices land far apart."""
    if n > 1 << 24:
        raise ValueError(f"cannot give {n} groups distinct 24-bit colours")
    codes = (np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B1) + np.uint64(0x5A5A5A)) % np.uint64(1 << 24)
    return np.stack([(codes >> np.uint64(s)) & np.uint64(255) for s in (16, 8, 0)], axis=1).astype(np.uint8)


def _vision_tower(model):
    """The vision model inside `model` (a CosMo/SimVLG model, its base model, or the tower itself)."""
    for candidate in (model, getattr(model, "model", None)):
        if candidate is not None and hasattr(candidate, "vision_model") and not hasattr(candidate, "embeddings"):
            return candidate.vision_model
    return model


def merge_groups(pixel_values: torch.Tensor, model) -> tuple[np.ndarray, int]:
    """Run the (merging) vision tower on one image (1, C, H, W); returns the patch grid (h, w) of output-token
    indices, numbered 0..k-1 over the tokens that hold patches, and k. Turns on source tracking in the tower if it
    was off (it then stays on)."""
    tower = _vision_tower(model)
    info = getattr(tower, "_token_merging", None)
    if info is None:
        raise ValueError("the vision tower does not merge tokens; call apply_token_merging(tower, r=...) first")
    if not info["track_source"]:
        apply_token_merging(tower, tower.tome_r, protect_cls=bool(info["num_protected"]),
                            proportional_attention=info["proportional_attention"], track_source=True)
    with torch.no_grad():
        tower(pixel_values=pixel_values)
    state = token_merge_state(tower)
    protected = tower._token_merging["num_protected"]
    if state is None:  # r = 0: nothing merged, every patch is its own token
        config = tower.config
        owner = np.arange((config.image_size // config.patch_size) ** 2)
    else:
        owner = state.source[0, :, protected:].argmax(0).cpu().numpy()  # (num_patches,): token holding each patch
    side = int(round(owner.size ** 0.5))
    if side * side != owner.size:
        raise ValueError(f"{owner.size} patches do not form a square grid")
    _, groups = np.unique(owner, return_inverse=True)
    return groups.reshape(side, side), int(groups.max()) + 1


def visualize_merges(image, model, image_processor=None, path=None, blend: float = 0.0) -> Image.Image:
    """A picture of `image` where every merged group of patches has one colour (distinct per group), the figure
    ToMe users share. `model`: a vision tower patched by `apply_token_merging`, or a model holding one.
    `image_processor` turns the PIL image into pixel values (default: tensors are taken as already processed).
    `blend` > 0 mixes that much of the input image into the colours. Saved as PNG when `path` is given."""
    if image_processor is not None:
        pixel_values = image_processor(images=image, return_tensors="pt")["pixel_values"]
    else:
        pixel_values = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image))
    pixel_values = pixel_values.reshape(-1, *pixel_values.shape[-3:])[:1]
    tower = _vision_tower(model)
    pixel_values = pixel_values.to(device=next(tower.parameters()).device, dtype=next(tower.parameters()).dtype)
    groups, count = merge_groups(pixel_values, model)
    size = pixel_values.shape[-1]
    cell = size // groups.shape[0]
    canvas = group_colours(count)[groups].repeat(cell, 0).repeat(cell, 1)  # (H, W, 3)
    if blend > 0 and isinstance(image, Image.Image):
        base = np.asarray(image.convert("RGB").resize((canvas.shape[1], canvas.shape[0])), dtype=np.float32)
        canvas = ((1 - blend) * canvas + blend * base).round().astype(np.uint8)
    picture = Image.fromarray(canvas, mode="RGB")
    if path is not None:
        picture.save(Path(path), format="PNG")
    return picture
