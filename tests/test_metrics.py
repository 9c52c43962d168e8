"""Metrics against the COCO caption scorers (pycocoevalcap) and naive references."""


import torch
from pycocoevalcap.bleu.bleu_scorer import BleuScorer
from pycocoevalcap.cider.cider_scorer import CiderScorer

from cosmo_vl.metrics import bleu, cider_d, exact_match, normalize_vqa_answer, retrieval_metrics, top1_accuracy, vqa_accuracy

PREDS = ["a red circle on the left", "two blue squares", "a man riding a horse", "green star", "an orange ring"]
REFS = [
    ["a red circle on the left side", "red circle left"],
    ["two blue squares on a white background", "blue squares"],
    ["a person riding a horse", "a man on a horse", "horse riding"],
    ["a big green star", "the green star"],
    ["a small purple triangle"],
]


def test_cider_and_bleu_match_pycocoevalcap():
    cider = CiderScorer(n=4, sigma=6.0)
    bleu_ref = BleuScorer(n=4)
    for p, r in zip(PREDS, REFS):
        cider += (p, r)
        bleu_ref += (p, r)
    expected_cider, expected_per_sample = cider.compute_score()
    ours = cider_d(PREDS, REFS)
    assert abs(ours["cider"] - expected_cider) < 1e-9
    assert max(abs(a - b) for a, b in zip(ours["per_sample"], expected_per_sample)) < 1e-9
    expected_bleu = bleu_ref.compute_score(option="closest")[0]
    got = bleu(PREDS, REFS)
    for n in range(4):
        assert abs(got[f"bleu{n + 1}"] - expected_bleu[n]) < 1e-7


def test_exact_match_and_vqa_normalisation():
    assert exact_match(["Red circle.", "blue"], [["red circle"], ["green"]]) == 0.5
    assert normalize_vqa_answer("Two!") == "2"
    assert normalize_vqa_answer("the Red, ball") == "red ball"
    assert vqa_accuracy(["two"], [["2"]]) == 1.0
    assert abs(vqa_accuracy(["2"], [["2", "2", "3", "3", "3", "3", "3", "3", "3", "3"]]) - 0.6) < 1e-9


def test_retrieval_matches_naive_ranks():
    g = torch.Generator().manual_seed(0)
    n_img, per = 7, 2
    sim = torch.randn(n_img, n_img * per, generator=g)
    t2i = [j // per for j in range(n_img * per)]
    got = retrieval_metrics(sim, t2i, ks=(1, 5))
    i2t_ranks, t2i_ranks = [], []
    for i in range(n_img):
        order = sorted(range(sim.shape[1]), key=lambda j: -float(sim[i, j]))
        i2t_ranks.append(min(order.index(j) for j in range(sim.shape[1]) if t2i[j] == i) + 1)
    for j in range(sim.shape[1]):
        order = sorted(range(n_img), key=lambda i: -float(sim[i, j]))
        t2i_ranks.append(order.index(t2i[j]) + 1)
    for k in (1, 5):
        assert abs(got[f"i2t_r{k}"] - sum(r <= k for r in i2t_ranks) / n_img) < 1e-6
        assert abs(got[f"t2i_r{k}"] - sum(r <= k for r in t2i_ranks) / len(t2i_ranks)) < 1e-6
    assert top1_accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), [1, 1]) == 0.5

