"""2D sin-cos position init: the table against a loop-by-loop reference, and where the init applies."""

import math

import pytest
import torch
from tiny_configs import tiny_cosmo_config
from transformers import CLIPVisionModel, ViTConfig, ViTModel

from cosmo_vl.modeling import CosmoForConditionalGeneration
from cosmo_vl.modeling.position_tables import sincos_2d_table, square_grid, tower_position_weight


def naive_table(grid: int, dim: int, prefix: int) -> list[list[float]]:
    rows = [[0.0] * dim for _ in range(prefix)]
    quarter = dim // 4
    for y in range(grid):
        for x in range(grid):
            row = []
            for coord in (x, y):
                freqs = [1.0 / 10000 ** (k / quarter) for k in range(quarter)]
                row += [math.sin(coord * f) for f in freqs] + [math.cos(coord * f) for f in freqs]
            rows.append(row)
    return rows


@pytest.mark.parametrize("grid,dim,prefix", [(4, 16, 1), (3, 8, 0)])
def test_table_matches_reference(grid, dim, prefix):
    table = sincos_2d_table(grid, grid, dim, prefix)
    assert torch.allclose(table, torch.tensor(naive_table(grid, dim, prefix)), atol=1e-6)


def test_table_rejects_odd_widths_and_grids():
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d_table(2, 2, 6)
    assert square_grid(17) == (4, 1) and square_grid(16) == (4, 0)
    with pytest.raises(ValueError, match="square grid"):
        square_grid(7)


def test_init_applies_to_tower_and_resampler_and_survives_round_trip(tmp_path):
    vision = tiny_cosmo_config().vision_config
    grid = vision.image_size // vision.patch_size
    config = tiny_cosmo_config(sincos_position_init=True, resampler_spatial_tokens=grid * grid + 1)
    model = CosmoForConditionalGeneration(config)
    tower = tower_position_weight(model.model.vision_model)
    expected = sincos_2d_table(grid, grid, vision.hidden_size, 1)
    assert torch.equal(tower, expected)
    spatial = model.model.resampler.spatial_embeddings
    assert torch.equal(spatial, sincos_2d_table(grid, grid, spatial.shape[1], 1))
    # Off by default: a random table, not the sin-cos one.
    plain = CosmoForConditionalGeneration(tiny_cosmo_config())
    assert not torch.allclose(tower_position_weight(plain.model.vision_model), expected)
    # Trained values are kept by save/load (the init never runs on loaded weights).
    with torch.no_grad():
        tower.add_(0.5)
    model.save_pretrained(tmp_path)
    loaded = CosmoForConditionalGeneration.from_pretrained(tmp_path)
    assert torch.equal(tower_position_weight(loaded.model.vision_model), tower)


def test_pretrained_tower_keeps_its_positions(tmp_path):
    config = tiny_cosmo_config()
    tower = CLIPVisionModel(config.vision_config)
    tower.save_pretrained(tmp_path)
    pretrained = CLIPVisionModel.from_pretrained(tmp_path)
    before = tower_position_weight(pretrained).clone()
    config.sincos_position_init = True
    model = CosmoForConditionalGeneration(config, vision_model=pretrained)
    assert torch.equal(tower_position_weight(model.model.vision_model), before)


def test_vit_position_parameter_is_found():
    vit = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                             image_size=16, patch_size=8))
    assert tower_position_weight(vit).shape == (1, 5, 16)
