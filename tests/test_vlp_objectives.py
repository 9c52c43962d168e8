"""Shared VLP objectives against naive references: negatives, ITM, EMA, queue, distillation, gathering, sampler."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cosmo_vl.modeling.vlp_objectives import (
    FeatureQueue,
    ITMHead,
    LearnableTemperature,
    alpha_ramp,
    distillation_targets,
    ema_update,
    hardest_negatives,
    image_text_matching_loss,
    itm_negatives,
    momentum_contrastive_loss,
    momentum_copy,
    positives_from_ids,
    sample_hard_negatives,
    soft_cross_entropy,
)
from cosmo_vl.trainers import losses as trainer_losses
from cosmo_vl.trainers.objectives import (
    GroupedHardNegativeSampler,
    gather_features,
    gather_no_grad,
    greedy_hard_negative_chain,
)


def test_temperature_init_and_clamp():
    temp = LearnableTemperature()
    assert temp().item() == pytest.approx(0.07)
    with torch.no_grad():
        temp.value.fill_(3.0)
    assert temp().item() == pytest.approx(0.5) and temp.value.item() == pytest.approx(0.5)  # clamped in place
    with torch.no_grad():
        temp.value.fill_(-1.0)
    assert temp().item() == pytest.approx(0.001)
    with pytest.raises(ValueError):
        LearnableTemperature(0.9)


@pytest.mark.parametrize("offset", [0, 3])
def test_sampled_negatives_never_positive_and_follow_softmax(offset):
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(5, 12, generator=g) * 3
    for _ in range(50):
        idx = sample_hard_negatives(sim, offset=offset, generator=g)
        assert not (idx == torch.arange(5) + offset).any()
    # Empirical frequencies of row 0 (drawn 4000 times in one call) match softmax with the positive removed.
    rows = sim[:1].repeat(4000, 1)
    mask = torch.zeros_like(rows, dtype=torch.bool)
    mask[:, offset] = True
    draws = sample_hard_negatives(rows, mask, generator=g)
    freq = torch.bincount(draws, minlength=12).float() / draws.numel()
    expected = torch.softmax(sim[0].masked_fill(torch.arange(12) == offset, float("-inf")), 0)
    assert (freq - expected).abs().max() < 0.04
    assert freq[offset] == 0


def test_negatives_with_ids_and_hardest():
    sim = torch.tensor([[5.0, 4.0, 1.0, 0.0], [4.0, 5.0, 3.0, 2.0], [0.0, 1.0, 5.0, 2.0], [0.0, 2.0, 3.0, 5.0]])
    ids = torch.tensor([7, 7, 8, 9])  # captions 0 and 1 belong to the same image
    mask = positives_from_ids(ids, ids)
    assert hardest_negatives(sim).tolist() == [1, 0, 3, 2]
    assert hardest_negatives(sim, mask).tolist() == [2, 2, 3, 2]
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        idx = sample_hard_negatives(sim, mask, generator=g)
        assert not mask[torch.arange(4), idx].any()
    neg_images, neg_texts = itm_negatives(sim, sim.t(), mode="hardest")
    assert neg_texts.tolist() == [1, 0, 3, 2] and neg_images.tolist() == hardest_negatives(sim.t()).tolist()
    # Local rows against a gathered pool (this process holds pool pairs 2 and 3): one (2, 4) mask, both directions.
    pool_ids, local = torch.tensor([7, 8, 7, 9]), slice(2, 4)
    rect = positives_from_ids(pool_ids[local], pool_ids)
    neg_images, neg_texts = itm_negatives(sim[local], sim.t()[local], mode="hardest", positive_mask=rect)
    for scores, got in ((sim[local], neg_texts), (sim.t()[local], neg_images)):
        naive = [max((j for j in range(4) if pool_ids[j] != pool_ids[2 + i]), key=lambda j: scores[i, j].item())
                 for i in range(2)]
        assert got.tolist() == naive
    with pytest.raises(ValueError, match="no negative"):
        sample_hard_negatives(torch.zeros(1, 1))
    # Extreme logits (all negatives underflow) fall back to a uniform negative, never the positive.
    extreme = torch.tensor([[1e4, -1e4, -1e4], [-1e4, 1e4, -1e4], [-1e4, -1e4, 1e4]])
    assert not (sample_hard_negatives(extreme) == torch.arange(3)).any()


def test_itm_head_and_loss_reference():
    head = ITMHead(8)
    fused = torch.randn(6, 8)
    logits = head(fused)
    loss = image_text_matching_loss(logits[:2], logits[2:])
    naive = sum(-F.log_softmax(logits[i], 0)[1 if i < 2 else 0] for i in range(6)) / 6
    torch.testing.assert_close(loss, naive)


def test_ema_update_math_and_copy():
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    momentum = momentum_copy(online)
    assert all(not p.requires_grad for p in momentum.parameters())
    before = [p.clone() for p in momentum.parameters()]
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
        online[1].running_mean.fill_(2.0)
    ema_update(online, momentum, 0.9)
    for p_m, p0, p in zip(momentum.parameters(), before, online.parameters()):
        torch.testing.assert_close(p_m, 0.9 * p0 + 0.1 * p)
    torch.testing.assert_close(momentum[1].running_mean, torch.full((4,), 2.0))
    ema_update([online], [momentum], 1.0)  # m = 1 keeps the momentum weights
    ema_update(online, momentum, 0.0)  # m = 0 copies the online weights
    for p_m, p in zip(momentum.parameters(), online.parameters()):
        torch.testing.assert_close(p_m, p)


def test_feature_queue_wraparound_and_dequeue():
    q = FeatureQueue(size=5, dim=2)
    assert len(q) == 0 and q.features.shape == (0, 2)
    rows = torch.arange(16, dtype=torch.float32).view(8, 2)
    q.enqueue(rows[:3])
    torch.testing.assert_close(q.features, rows[:3])
    q.enqueue(rows[3:7])  # 7 rows into 5 slots: the oldest two are overwritten
    assert len(q) == 5 and int(q.ptr) == 2
    torch.testing.assert_close(q.features, rows[2:7])
    torch.testing.assert_close(q.queue[:2], rows[5:7])
    torch.testing.assert_close(q.dequeue(2), rows[2:4])
    torch.testing.assert_close(q.features, rows[4:7])
    q.enqueue(torch.arange(24, dtype=torch.float32).view(12, 2))  # more than the size: the last 5 rows
    torch.testing.assert_close(q.features, torch.arange(24, dtype=torch.float32).view(12, 2)[-5:])
    assert set(q.state_dict()) == {"queue", "ptr", "filled"}
    assert FeatureQueue().queue.shape == (65536, 256)
    ids = FeatureQueue(size=3, dim=(), dtype=torch.long)
    ids.enqueue(torch.tensor([4, 5, 6, 7]))
    assert ids.features.tolist() == [5, 6, 7]


def test_distillation_targets_and_alpha_ramp():
    logits = torch.randn(3, 7)
    y = distillation_targets(logits, 0.4)
    naive = 0.4 * torch.softmax(logits, 1) + 0.6 * F.one_hot(torch.arange(3), 7).float()
    torch.testing.assert_close(y, naive)
    torch.testing.assert_close(y.sum(1), torch.ones(3))
    assert alpha_ramp(0, 100) == 0.0 and alpha_ramp(50, 100) == pytest.approx(0.2) and alpha_ramp(500, 100) == 0.4
    assert alpha_ramp(3, 0, 0.4) == 0.4


def test_momentum_contrastive_loss_reference():
    torch.manual_seed(0)
    b, d, k = 4, 8, 6
    img, txt, img_m, txt_m = (F.normalize(torch.randn(b, d), dim=1) for _ in range(4))
    img_q, txt_q = F.normalize(torch.randn(k, d), dim=1), F.normalize(torch.randn(k, d), dim=1)
    temp, alpha = 0.07, 0.4
    loss = momentum_contrastive_loss(img, txt, img_m, txt_m, temp, alpha, img_q, txt_q)
    # naive, row by row
    text_all, image_all = torch.cat([txt_m, txt_q]), torch.cat([img_m, img_q])
    total = 0.0
    for i in range(b):
        for q, q_m, cols in ((img[i], img_m[i], text_all), (txt[i], txt_m[i], image_all)):
            target = alpha * torch.softmax(q_m @ cols.t() / temp, 0)
            target[i] += 1 - alpha
            total += -(torch.log_softmax(q @ cols.t() / temp, 0) * target).sum()
    torch.testing.assert_close(loss, total / (2 * b))
    # alpha = 0, no queue: plain symmetric InfoNCE
    plain = momentum_contrastive_loss(img, txt, img, txt, temp, 0.0)
    logits = img @ txt.t() / temp
    ref = (F.cross_entropy(logits, torch.arange(b)) + F.cross_entropy(logits.t(), torch.arange(b))) / 2
    torch.testing.assert_close(plain, ref)
    torch.testing.assert_close(soft_cross_entropy(logits, F.one_hot(torch.arange(b), b).float()), F.cross_entropy(logits, torch.arange(b)))


# ------------------------------------------------------------------------------------------------ gathering


def test_gather_without_process_group_is_identity():
    x = torch.randn(3, 4, requires_grad=True)
    out, offset = gather_features(x)
    assert out is x and offset == 0
    assert gather_no_grad(x) is x


def test_gather_with_faked_collective(monkeypatch):
    """Two processes faked: rank 1's rows land at offset 3 and its gradients flow to the local tensor."""
    x = torch.randn(3, 4, requires_grad=True)
    other = torch.randn(3, 4)
    monkeypatch.setattr(trainer_losses, "world", lambda: (1, 2))
    monkeypatch.setattr("cosmo_vl.trainers.objectives.world", lambda: (1, 2))
    monkeypatch.setattr(trainer_losses.dist_fn, "all_gather", lambda t: [other, t])
    out, offset = gather_features(x)
    assert offset == 3 and out.shape == (6, 4)
    torch.testing.assert_close(out[3:], x)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(3, 4))


# -------------------------------------------------------------------------------------------------- sampler


def _naive_chain(image, text, start=0):
    n = len(image)
    sim = [[float(image[i] @ text[j]) for j in range(n)] for i in range(n)]
    order, used, cur, from_image = [start], {start}, start, True
    while len(order) < n:
        cands = [j for j in range(n) if j not in used]
        cur = max(cands, key=(lambda j: sim[cur][j]) if from_image else (lambda j: sim[j][cur]))
        used.add(cur)
        order.append(cur)
        from_image = not from_image
    return order


def test_greedy_chain_matches_naive_reference():
    torch.manual_seed(0)
    image, text = F.normalize(torch.randn(12, 5), dim=1), F.normalize(torch.randn(12, 5), dim=1)
    for start in (0, 5):
        assert greedy_hard_negative_chain(image, text, start) == _naive_chain(image, text, start)


def _clustered(n_clusters=6, per=4, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_clusters, dim, generator=g), dim=1) * 4
    labels = torch.arange(n_clusters).repeat_interleave(per)
    perm = torch.randperm(len(labels), generator=g)
    labels = labels[perm]
    image = F.normalize(centres[labels] + 0.1 * torch.randn(len(labels), dim, generator=g), dim=1)
    text = F.normalize(centres[labels] + 0.1 * torch.randn(len(labels), dim, generator=g), dim=1)
    return labels, image, text


def test_grouped_sampler_is_a_permutation_and_groups_hard_negatives():
    labels, image, text = _clustered()
    n, bs = len(labels), 4
    sampler = GroupedHardNegativeSampler(n, bs, seed=0)
    first = list(sampler)
    assert sorted(first) == list(range(n)) and len(sampler) == n
    # Record the epoch's embeddings in the order the batches were drawn (no indices needed).
    for start in range(0, n, bs):
        idx = torch.tensor(first[start : start + bs])
        sampler.record(image[idx], text[idx])
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(n))
    purity = [len(set(labels[second[s : s + bs]].tolist())) == 1 for s in range(0, n, bs)]
    random_purity = [len(set(labels[first[s : s + bs]].tolist())) == 1 for s in range(0, n, bs)]
    assert sum(purity) >= 4 > sum(random_purity)  # batches are made of mutually hard negatives
    # Not recorded this epoch: the next one is random again.
    sampler.set_epoch(2)
    assert sorted(list(sampler)) == list(range(n))


def test_grouped_sampler_shards_and_pads():
    labels, image, text = _clustered(n_clusters=5, per=3)
    n = len(labels)  # 15
    shards = [GroupedHardNegativeSampler(n, 2, num_replicas=2, rank=r, seed=3) for r in range(2)]
    orders = [list(s) for s in shards]
    assert len(orders[0]) == len(orders[1]) == len(shards[0]) == 8
    assert set(orders[0]) | set(orders[1]) == set(range(n))
    for s in shards:
        s.record(image, text, indices=torch.arange(n))
    orders = [list(s) for s in shards]
    merged = []
    for k in range(4):  # global batch k = rank 0's k-th batch then rank 1's
        merged += orders[0][2 * k : 2 * k + 2] + orders[1][2 * k : 2 * k + 2]
    assert set(merged) == set(range(n))
    dropped = GroupedHardNegativeSampler(n, 2, num_replicas=2, rank=0, drop_last=True)
    assert len(list(dropped)) == len(dropped) == 6 and math.floor(n / 4) * 2 == 6
