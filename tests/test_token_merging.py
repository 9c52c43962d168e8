"""Token merging: the vectorised matching against a loop-by-loop reference, invariants, proportional attention
against duplicated tokens, and merging inside transformers' CLIP / SigLIP / ViT encoders."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, SiglipVisionConfig, SiglipVisionModel, ViTConfig, ViTModel

from cosmo_vl.modeling.token_merging import (
    EncoderLayerContext,
    MergeSchedule,
    MergeState,
    TokenMergeContext,
    apply_token_merging,
    find_encoder_layers,
    linear_r,
    merge_step,
    remove_token_merging,
    resolve_r,
    size_bias,
    token_counts,
    token_merge_state,
)


# ------------------------------------------------------------------------------------ loop-by-loop reference
def _pair_score(metric, mask, i, j, k):
    if i < k or j < k:
        return -math.inf
    if mask[i] and mask[j]:
        a, b = metric[i].double(), metric[j].double()
        return float(a @ b / (a.norm() * b.norm()))
    if not mask[i] and not mask[j]:
        return 3.0
    return 2.0 if not mask[i] else -10.0


def reference_merge(x, metric, size, mask, r, k):
    """One sample, plain Python: returns (outputs, sizes, groups) with groups = input positions per output."""
    n = x.shape[0]
    a_pos, b_pos = list(range(0, n, 2)), list(range(1, n, 2))
    free_a = [i for i in a_pos if i >= k]
    free_b = [j for j in b_pos if j >= k]
    r = min(r, len(free_a)) if free_b else 0
    if r == 0:  # nothing merged: the tokens stay as they are
        return x.double(), size.double(), [[i] for i in range(n)]
    best = {}
    for i in a_pos:
        scores = [_pair_score(metric, mask, i, j, k) for j in b_pos]
        top = max(range(len(scores)), key=lambda c: (scores[c], -c))  # first maximum
        best[i] = (scores[top], b_pos[top])
    ranked = sorted(a_pos, key=lambda i: -best[i][0])  # Python's sort is stable
    merged = ranked[:r]
    groups = {j: [j] for j in b_pos}
    for i in merged:
        groups[best[i][1]].append(i)
    protected = [[p] for p in range(min(k, n))]
    unmerged_a = [[i] for i in a_pos if i not in merged and i >= k]
    b_groups = [sorted(groups[j]) for j in b_pos if j >= k]
    order = protected + unmerged_a + b_groups
    dest = [p for p in range(min(k, n))] + [g[0] for g in unmerged_a] + [j for j in b_pos if j >= k]
    outs, sizes = [], []
    for group, d in zip(order, dest):
        s = sum(float(size[i]) for i in group)
        if s > 0:
            outs.append(sum(float(size[i]) * x[i].double() for i in group) / s)
        else:
            outs.append(x[d].double())
        sizes.append(s)
    return torch.stack(outs), torch.tensor(sizes), order


def _random_batch(b=3, n=13, c=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, c, generator=g), torch.randn(b, n, 6, generator=g)


@pytest.mark.parametrize("n,r,k", [(13, 4, 0), (13, 6, 1), (12, 5, 3), (9, 10, 1), (16, 0, 1)])
def test_matches_the_loop_reference(n, r, k):
    x, metric = _random_batch(n=n)
    size = torch.randint(1, 4, (3, n)).float()
    state = MergeState(size, source=torch.eye(n).expand(3, n, n).clone())
    out, new = merge_step(x, metric, r, state, num_protected=k)
    for b in range(3):
        ref_x, ref_size, groups = reference_merge(x[b], metric[b], size[b], [True] * n, r, k)
        torch.testing.assert_close(out[b].double(), ref_x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(new.size[b], ref_size.float())
        held = [sorted(torch.nonzero(row).flatten().tolist()) for row in new.source[b]]
        assert held == groups


def test_matches_the_reference_with_padding_and_varying_lengths():
    n = 14
    x, metric = _random_batch(n=n, seed=1)
    lengths = [14, 9, 4]
    mask = torch.arange(n)[None] < torch.tensor(lengths)[:, None]
    state = MergeState.start(mask, track_source=True)
    out, new = merge_step(x, metric, 5, state, num_protected=1)
    for b in range(3):
        ref_x, ref_size, groups = reference_merge(x[b], metric[b], mask[b].float(), mask[b].tolist(), 5, 1)
        torch.testing.assert_close(out[b].double(), ref_x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(new.size[b], ref_size.float())
        real_groups = [sorted(i for i in g if mask[b, i]) for g in groups]
        assert [sorted(torch.nonzero(row).flatten().tolist()) for row in new.source[b]] == real_groups
    # Padding never lands in a real token, and the real tokens all survive somewhere.
    for b, length in enumerate(lengths):
        assert int(new.size[b].sum()) == length
        for row, s in zip(new.source[b], new.size[b]):
            assert int(row[length:].sum()) == 0 and int(row.sum()) == int(s)
    # The 4-token sample lost padding only: its real tokens are untouched.
    assert sorted(int(s) for s in new.size[2] if s > 0) == [1, 1, 1, 1]


def test_invariants():
    x, metric = _random_batch(n=17)
    state = MergeState.start(torch.ones(3, 17, dtype=torch.bool), track_source=True)
    same, same_state = merge_step(x, metric, 0, state, num_protected=1)
    assert same is x and same_state is state  # r = 0 is the identity
    out = x
    for _ in range(3):
        out, state = merge_step(out, out, 4, state, num_protected=1)
    assert out.shape == (3, 17 - 12, 8)
    assert torch.equal(state.size.sum(-1), torch.full((3,), 17.0))  # sizes sum to the input token count
    assert torch.equal(state.source.sum(1), torch.ones(3, 17))  # every input patch is held exactly once
    assert torch.equal(state.source[:, 0, 0], torch.ones(3)) and torch.equal(state.size[:, 0], torch.ones(3))  # CLS kept
    torch.testing.assert_close(out[:, 0], x[:, 0])  # (merge_step does not touch an unmerged token)
    # Identical tokens: every merged output equals the common value.
    v = torch.randn(1, 1, 8).expand(2, 11, 8).contiguous()
    merged, st = merge_step(v, v, 5, MergeState.start(torch.ones(2, 11, dtype=torch.bool)))
    torch.testing.assert_close(merged, v[:, :6])
    assert st.size.max() > 1


def test_size_weighted_average_of_sources():
    """A merged token is the size-weighted mean of the input patches it holds, after several steps."""
    x, _ = _random_batch(n=20)
    state = MergeState.start(torch.ones(3, 20, dtype=torch.bool), track_source=True)
    out = x
    for r in (5, 4, 3):
        out, state = merge_step(out, out, r, state, num_protected=1)
    expected = state.source @ x / state.source.sum(-1, keepdim=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_proportional_attention_equals_duplicated_tokens():
    """A token of size s inside a patched CLIP layer behaves exactly like s copies of it in the plain layer."""
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                              image_size=16, patch_size=8)
    model = CLIPVisionModel(config).eval()
    layer = find_encoder_layers(model)[0]
    x = torch.randn(1, 6, 32)
    sizes = torch.tensor([[1.0, 3.0, 1.0, 2.0, 4.0, 1.0]])
    duplicated = x.repeat_interleave(sizes[0].long(), dim=1)  # (1, 12, 32)
    with torch.no_grad():
        expected = layer(duplicated, None)
        apply_token_merging(model, r=0)
        context = TokenMergeContext(r=[0], num_protected=0, state=MergeState(sizes))
        out = layer(x, None, layer_context=context)
    first_copy = torch.cumsum(sizes[0].long(), 0) - sizes[0].long()
    torch.testing.assert_close(out, expected[:, first_copy], rtol=1e-5, atol=1e-5)
    # The bias itself: log(size) for real tokens, a masking value for padding.
    bias = size_bias(torch.tensor([[2.0, 0.0]]), torch.float32)
    assert bias.shape == (1, 1, 1, 2) and bias[0, 0, 0, 0] == math.log(2.0) and bias[0, 0, 0, 1] < -1e30
    q, k, v = torch.randn(3, 1, 2, 5, 8).unbind(0)
    sizes = torch.tensor([[2.0, 1.0, 0.0, 3.0, 1.0]])
    keep = sizes[0].long()
    plain = F.scaled_dot_product_attention(q, k.repeat_interleave(keep, 2), v.repeat_interleave(keep, 2))
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=size_bias(sizes, q.dtype)), plain)


def _tiny(kind: str, layers: int = 3):
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
                  image_size=32, patch_size=4)
    if kind == "clip":
        return CLIPVisionModel(CLIPVisionConfig(**common)).eval()
    if kind == "siglip":
        return SiglipVisionModel(SiglipVisionConfig(**common)).eval()
    return ViTModel(ViTConfig(**common)).eval()


@pytest.mark.parametrize("kind,tokens,cls", [("clip", 65, 1), ("siglip", 64, 0), ("vit", 65, 1)])
def test_merging_inside_transformers_encoders(kind, tokens, cls):
    torch.manual_seed(0)
    model = _tiny(kind)
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(pixel_values=px)
        apply_token_merging(model, r=0)
        same = model(pixel_values=px)
        assert torch.equal(same.last_hidden_state, plain.last_hidden_state)

        class Decomposed(EncoderLayerContext):  # every layer rebuilt from its own submodules, nothing changed
            def wants(self, layer_idx):
                return True

        rebuilt = model(pixel_values=px, layer_context=Decomposed())
        assert torch.equal(rebuilt.last_hidden_state, plain.last_hidden_state)

        model.tome_r = [6, 5, 4]  # a plain attribute, read at every forward
        out = model(pixel_values=px, output_hidden_states=True)
        counts = [h.shape[1] for h in out.hidden_states]
        assert counts == [tokens] + token_counts(tokens, [6, 5, 4], cls) == [tokens, tokens - 6, tokens - 11, tokens - 15]
        state = token_merge_state(model)
        assert torch.equal(state.size.sum(-1), torch.full((2,), float(tokens)))
        if cls:
            assert torch.equal(state.size[:, 0], torch.ones(2))
        model.tome_r = MergeSchedule(4, start_scale=0.0, end_scale=1.0)
        model.tome_r.set_progress(0.5)
        assert model(pixel_values=px).last_hidden_state.shape[1] == tokens - 6
        remove_token_merging(model)
        assert not hasattr(model, "tome_r")
        assert torch.equal(model(pixel_values=px).last_hidden_state, plain.last_hidden_state)


def test_source_tracking_and_gradient_checkpointing():
    torch.manual_seed(0)
    model = _tiny("clip").train()
    px = torch.randn(2, 3, 32, 32)
    apply_token_merging(model, r=5, track_source=True)
    out = model(pixel_values=px).last_hidden_state
    state = token_merge_state(model)
    assert state.source.shape == (2, 50, 65) and torch.equal(state.source.sum(1), torch.ones(2, 65))
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    out2 = model(pixel_values=px).last_hidden_state
    out2.square().mean().backward()
    torch.testing.assert_close(out2, out)
    for name, param in model.named_parameters():
        if name in grads:
            torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-6)


def test_schedules():
    assert resolve_r(3, 4) == [3, 3, 3, 3] and resolve_r([1, 2], 2) == [1, 2]
    with pytest.raises(ValueError):
        resolve_r([1, 2, 3], 2)
    assert linear_r(8, 0, 5) == [8, 6, 4, 2, 0]
    decreasing = MergeSchedule(8, layer_profile="decreasing").per_layer(5)
    assert decreasing == [16, 12, 8, 4, 0] and sum(decreasing) == 8 * 5
    ramp = MergeSchedule([4, 8], start_scale=1.0, end_scale=0.0)  # merge less as training goes
    ramp.progress = 0.0
    assert ramp.per_layer(2) == [4, 8]
    ramp.set_progress(0.75)
    assert ramp.per_layer(2) == [1, 2]
    assert token_counts(257, [19] * 12, 1)[-1] == 29  # the SimVLG connector: 257 -> 29
