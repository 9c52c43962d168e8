"""SimVLG's merging connector (ToMe bipartite soft matching, r tokens per layer) exports with torch.export."""

import pytest
import torch
from torch import nn

from cosmo_vl.modeling import SimVlgConfig
from cosmo_vl.modeling.modeling_simvlg import SimVlgConnector
from cosmo_vl.modeling.token_merging import bipartite_soft_matching, merge_weighted, token_counts


class ConnectorCall(nn.Module):
    """The connector with its merge schedule fixed (r per layer and protected tokens are Python ints)."""

    def __init__(self, connector: SimVlgConnector, r_per_layer: list[int], num_protected: int):
        super().__init__()
        self.connector, self.r_per_layer, self.num_protected = connector, r_per_layer, num_protected

    def forward(self, hidden_states: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.connector(hidden_states, size, self.r_per_layer, self.num_protected)


def _connector(num_layers: int = 3) -> SimVlgConnector:
    config = SimVlgConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 16, "intermediate_size": 20,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 8, "patch_size": 4},
        text_config={"model_type": "llama", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 20,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1},
        connector_hidden_size=16, connector_num_layers=num_layers, connector_num_heads=2,
        connector_intermediate_size=24, connector_dropout=0.0,
    )
    torch.manual_seed(0)
    return SimVlgConnector(config).eval()


@pytest.mark.parametrize("padded", [False, True], ids=["real", "padded"])
def test_connector_exports_and_matches_eager(padded):
    r, num_protected = [3, 2, 2], 1
    module = ConnectorCall(_connector(), r, num_protected)
    x = torch.randn(2, 17, 16)  # (B, N, C): CLS + 16 patches
    size = torch.ones(2, 17)
    if padded:
        size[1, 11:] = 0  # sample 1 has 11 real tokens: padding merges among itself first
    exported = torch.export.export(module, (x, size), strict=False)
    # A graph with no data-dependent guard runs on other values of the same shapes.
    other_x, other_size = torch.randn(2, 17, 16), size.flip(0)
    for args in ((x, size), (other_x, other_size)):
        with torch.no_grad():
            want_x, want_size = module(*args)
            got_x, got_size = exported.module()(*args)
        assert got_x.shape == (2, token_counts(17, r, num_protected)[-1], 16)
        torch.testing.assert_close(got_x, want_x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_size, want_size, atol=0, rtol=0)


def test_merge_weighted_padding_groups_keep_their_destination():
    """The merge without a branch on values gives, per group, the size-weighted mean, or the destination's value
    for a group of padding only (computed here token by token)."""
    torch.manual_seed(1)
    x, size = torch.randn(1, 8, 4), torch.tensor([[1.0, 2.0, 1.0, 3.0, 0.0, 0.0, 0.0, 0.0]])
    plan = bipartite_soft_matching(torch.randn(1, 8, 4), 3, size > 0)
    merged, merged_size = merge_weighted(plan, x, size)
    a, b = list(range(0, 8, 2)), list(range(1, 8, 2))
    groups = {dst: [b[dst]] for dst in range(4)}
    for src, dst in zip(plan.src_idx[0].tolist(), plan.dst_idx[0].tolist()):
        groups[dst].append(a[src])
    expected = [x[0, a[i]] for i in plan.unm_idx[0].tolist()]
    expected_size = [size[0, a[i]] for i in plan.unm_idx[0].tolist()]
    for dst in range(4):
        weights = size[0, groups[dst]]
        total = weights.sum()
        mean = (x[0, groups[dst]] * weights[:, None]).sum(0) / total if total > 0 else x[0, b[dst]]
        expected.append(mean)
        expected_size.append(total)
    torch.testing.assert_close(merged[0], torch.stack(expected))
    torch.testing.assert_close(merged_size[0], torch.stack(expected_size))
    assert torch.isfinite(merged).all()
