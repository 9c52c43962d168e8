"""Offline captioning, VQA, retrieval and classification metrics (no metric scripts fetched from a hub).

CIDEr-D and BLEU follow the definitions used by the COCO caption evaluation (n = 1..4, tf-idf weighted n-gram
cosine with clipping and a Gaussian length penalty, sigma = 6, x10; BLEU with the closest reference length);
captions are tokenised by lower-casing and splitting on non-alphanumerics instead of the Java PTB tokenizer.
"""

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def _all_ngrams(words: list[str], max_n: int = 4) -> list[Counter]:
    return [_ngrams(words, n) for n in range(1, max_n + 1)]


# --------------------------------------------------------------------------------------------------- CIDEr-D
def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]], sigma: float = 6.0) -> dict:
    """Corpus CIDEr-D. `references[i]` is the list of reference captions of sample i. Returns
    {"cider": corpus score, "per_sample": [...]} (scores on the usual x10 scale)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists.")
    refs_ngrams = [[_all_ngrams(tokenize(r)) for r in refs] for refs in references]
    doc_freq: Counter = Counter()
    for refs in refs_ngrams:
        doc_freq.update({g for ref in refs for counts in ref for g in counts})
    log_num_docs = math.log(float(len(references)))

    def vectors(counts: list[Counter]):
        vecs, norms = [], []
        for c in counts:
            vec = {g: tf * (log_num_docs - math.log(max(1.0, doc_freq[g]))) for g, tf in c.items()}
            vecs.append(vec)
            norms.append(math.sqrt(sum(v * v for v in vec.values())))
        return vecs, norms, sum(counts[0].values())

    per_sample = []
    for pred, refs in zip(predictions, refs_ngrams):
        hyp_vec, hyp_norm, hyp_len = vectors(_all_ngrams(tokenize(pred)))
        total = np.zeros(4)
        for ref in refs:
            ref_vec, ref_norm, ref_len = vectors(ref)
            penalty = math.exp(-((hyp_len - ref_len) ** 2) / (2 * sigma**2))
            for n in range(4):
                dot = sum(min(v, ref_vec[n].get(g, 0.0)) * ref_vec[n].get(g, 0.0) for g, v in hyp_vec[n].items())
                if hyp_norm[n] and ref_norm[n]:
                    total[n] += penalty * dot / (hyp_norm[n] * ref_norm[n])
        per_sample.append(float(total.mean() / max(1, len(refs)) * 10.0))
    return {"cider": float(np.mean(per_sample)) if per_sample else 0.0, "per_sample": per_sample}


# ------------------------------------------------------------------------------------------------------ BLEU
def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4) -> dict:
    """Corpus BLEU-1..4 with the closest reference length for the brevity penalty."""
    matches, totals = np.zeros(max_n), np.zeros(max_n)
    hyp_total, ref_total = 0, 0
    for pred, refs in zip(predictions, references):
        hyp = tokenize(pred)
        ref_toks = [tokenize(r) for r in refs]
        hyp_total += len(hyp)
        ref_total += min((abs(len(r) - len(hyp)), len(r)) for r in ref_toks)[1]
        for n in range(1, max_n + 1):
            hyp_counts = _ngrams(hyp, n)
            max_ref: Counter = Counter()
            for r in ref_toks:
                max_ref |= _ngrams(r, n)
            matches[n - 1] += sum(min(c, max_ref[g]) for g, c in hyp_counts.items())
            totals[n - 1] += max(0, len(hyp) - n + 1)
    tiny, small = 1e-15, 1e-9
    brevity = 1.0 if hyp_total >= ref_total else math.exp(1 - ref_total / max(hyp_total, small))
    scores, log_sum = {}, 0.0
    for n in range(1, max_n + 1):
        log_sum += math.log((matches[n - 1] + tiny) / (totals[n - 1] + small))
        scores[f"bleu{n}"] = float(brevity * math.exp(log_sum / n))
    return scores


def exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Fraction of predictions equal (after tokenisation) to one of their references."""
    hits = [tokenize(p) in [tokenize(r) for r in refs] for p, refs in zip(predictions, references)]
    return float(np.mean(hits)) if hits else 0.0


# ------------------------------------------------------------------------------------------------------- VQA
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$:]")


def normalize_vqa_answer(answer: str) -> str:
    """The VQA evaluation's answer normalisation: case, punctuation, number words, articles."""
    answer = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    answer = re.sub(r"(?<=\d),(?=\d)", "", answer)
    answer = _PUNCT.sub(" ", answer)
    answer = re.sub(r"(?<!\d)\.(?!\d)", "", answer)
    words = [_NUMBERS.get(w, w) for w in answer.split() if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """VQA accuracy: with 10 human answers, min(1, matches among the other 9 / 3) averaged over the 10
    leave-one-out subsets; with fewer answers, min(1, matches / min(3, n_answers))."""
    scores = []
    for pred, gts in zip(predictions, answers):
        p = normalize_vqa_answer(pred)
        gts = [normalize_vqa_answer(a) for a in gts]
        if len(gts) >= 10:
            per = [min(1.0, sum(g == p for j, g in enumerate(gts) if j != i) / 3) for i in range(len(gts))]
            scores.append(float(np.mean(per)))
        else:
            scores.append(min(1.0, sum(g == p for g in gts) / min(3, len(gts))))
    return float(np.mean(scores)) if scores else 0.0


# ------------------------------------------------------------------------------------ retrieval, classification
def retrieval_metrics(similarity: torch.Tensor, text_to_image: Sequence[int] | None = None,
                      positives: torch.Tensor | None = None, ks=(1, 5, 10)) -> dict:
    """similarity: (N_images, N_texts). Positives are given by `text_to_image[j]` (the image text j describes)
    or by a bool matrix `positives` (N_images, N_texts) when several images share a text.

    Returns image->text and text->image recall@k (a query hits if any positive is in its top k) and the median
    rank (1-based) of the first positive.
    """
    sim = similarity.float().cpu()
    n_img, n_txt = sim.shape
    if positives is None:
        t2i = torch.as_tensor(text_to_image)
        positives = t2i[None, :] == torch.arange(n_img)[:, None]
    positives = positives.bool().cpu()
    if not positives.any(1).all() or not positives.any(0).all():
        raise ValueError("every image and every text needs at least one positive for retrieval metrics")

    def first_hit_rank(scores: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        order = scores.argsort(dim=1, descending=True)
        return pos.gather(1, order).float().argmax(dim=1) + 1

    rank_i2t = first_hit_rank(sim, positives)
    rank_t2i = first_hit_rank(sim.t(), positives.t())
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = float((rank_i2t <= k).float().mean())
        out[f"t2i_r{k}"] = float((rank_t2i <= k).float().mean())
    out["i2t_median_rank"] = float(rank_i2t.float().median())
    out["t2i_median_rank"] = float(rank_t2i.float().median())
    return out


def top1_accuracy(logits: torch.Tensor, labels: Sequence[int]) -> float:
    return float((logits.argmax(-1).cpu() == torch.as_tensor(labels)).float().mean())
