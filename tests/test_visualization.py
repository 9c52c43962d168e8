"""visualize_merges: one colour per merged group of patches."""

import numpy as np
import torch
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from cosmo_vl.modeling import apply_token_merging
from cosmo_vl.visualization import group_colours, visualize_merges


def _tower(r):
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=32, patch_size=4)  # 8 x 8 = 64 patches + CLS
    return apply_token_merging(CLIPVisionModel(config).eval(), r=r, track_source=True)


def test_picture_size_and_one_colour_per_output_token(tmp_path):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    tower = _tower(r=10)
    picture = visualize_merges(image, tower, processor, tmp_path / "merges.png")
    saved = Image.open(tmp_path / "merges.png")
    assert saved.size == picture.size == (32, 32)
    colours = {tuple(c) for c in np.asarray(saved.convert("RGB")).reshape(-1, 3)}
    with torch.no_grad():
        out = tower(pixel_values=processor(images=image, return_tensors="pt")["pixel_values"])
    output_tokens = out.last_hidden_state.shape[1] - 1  # the CLS token holds no patch
    assert output_tokens == 65 - 1 - 3 * 10
    assert len(colours) == output_tokens


def test_without_merging_every_patch_has_its_own_colour():
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    picture = visualize_merges(Image.new("RGB", (32, 32), (90, 10, 200)), _tower(r=0), processor)
    pixels = np.asarray(picture).reshape(8, 4, 8, 4, 3)
    assert len({tuple(c) for c in np.asarray(picture).reshape(-1, 3)}) == 64
    assert (pixels == pixels[:, :1, :, :1]).all()  # each 4 x 4 cell is flat


def test_group_colours_are_distinct():
    colours = group_colours(5000)
    assert len({tuple(c) for c in colours}) == 5000
