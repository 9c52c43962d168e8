"""Batched evaluation loops: zero-shot classification, image-text retrieval, captioning and VQA.

Media items are decoded by the training collator's own function (`cosmo_vl.processing.load_media`): anything a
dataset row may hold for training (PIL images, datasets records {"bytes", "path"}, encoded bytes, paths, frame
arrays, video paths) evaluates too.
"""

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .metrics import bleu, cider_d, exact_match, retrieval_metrics, top1_accuracy, vqa_accuracy
from .processing.captions import caption_references
from .processing.media import load_media


def _batches(items: Sequence, size: int, desc: str, progress: bool):
    starts = range(0, len(items), size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        yield items[start : start + size]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def image_embeddings(model, processor, media: Sequence, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """(N, D) normalised embeddings of images or videos, one media item per sample (any item `load_media` reads)."""
    out = []
    for chunk in _batches(list(media), batch_size, "image features", progress):
        items = [[load_media(m)] for m in chunk]
        batch = processor(media=items, text=["<visual>"] * len(chunk), return_tensors="pt")
        out.append(
            model.get_image_features(
                batch["pixel_values"].to(_device(model)), batch["media_mask"].to(_device(model)),
                batch["frame_mask"].to(_device(model)), return_dict=True,
            ).pooler_output.float().cpu()
        )
    return torch.cat(out)


@torch.no_grad()
def text_embeddings(model, processor, texts: Sequence[str], batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """(N, D) normalised text embeddings, formatted exactly as the training pairs."""
    out = []
    for chunk in _batches(list(texts), batch_size, "text features", progress):
        batch = processor.contrastive_text_inputs(list(chunk), return_tensors="pt").to(_device(model))
        text = model.get_text_features(batch["input_ids"], batch["attention_mask"], return_dict=True)
        out.append(text.pooler_output.float().cpu())
    return torch.cat(out)


def zero_shot_classification(
    model, processor, media: Sequence, labels: Sequence[int], class_prompts: Sequence[Sequence[str]] | Sequence[str],
    reduce: str = "mean", batch_size: int = 64, progress: bool = True,
) -> dict:
    """Top-1 accuracy of the nearest class in the contrastive space. Each class is one prompt or a list of
    prompts: `reduce="mean"` averages their normalised embeddings into one prototype (CLIP's prompt
    ensembling); `reduce="max"` scores a class by its best-matching prompt (for prompts that spell out
    nuisance attributes, e.g. every background a class can appear on)."""
    image = image_embeddings(model, processor, media, batch_size, progress)
    prompts = [[c] if isinstance(c, str) else list(c) for c in class_prompts]
    flat = [p for group in prompts for p in group]
    text = text_embeddings(model, processor, flat, progress=progress)
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    scores, start = [], 0
    for group in prompts:
        emb = text[start : start + len(group)]  # (P, D)
        start += len(group)
        if reduce == "mean":
            scores.append(image @ torch.nn.functional.normalize(emb.mean(0), dim=-1))
        else:
            scores.append((image @ emb.t()).max(dim=-1).values)
    logits = torch.stack(scores, dim=-1)  # (N, C)
    return {"zero_shot_top1": top1_accuracy(logits, labels), "num_classes": len(prompts)}


def retrieval(model, processor, media: Sequence, texts: Sequence[str], text_to_image: Sequence[int] | None = None,
              image_to_text: Sequence[int] | None = None, batch_size: int = 64, progress: bool = True) -> dict:
    """Image<->text recall@1/5/10 and median ranks. Give `text_to_image` (text j describes image i) or
    `image_to_text` (image i's caption is text j, or a list of its captions' indices; several images may share
    one text)."""
    image = image_embeddings(model, processor, media, batch_size, progress)
    text = text_embeddings(model, processor, texts, progress=progress)
    positives = None
    if image_to_text is not None:
        positives = torch.zeros(len(media), len(texts), dtype=torch.bool)
        for i, targets in enumerate(image_to_text):
            positives[i, torch.as_tensor(targets, dtype=torch.long)] = True
    return retrieval_metrics(image @ text.t(), text_to_image, positives=positives)


@torch.no_grad()
def generate_texts(
    model, processor, prompts: Sequence[str], media: Sequence[Sequence], batch_size: int = 32,
    max_new_tokens: int = 20, num_beams: int = 1, progress: bool = True, desc: str = "generate",
) -> list[str]:
    """Greedy/beam generation for interleaved prompts (left padded), stopping at `<|endofchunk|>`."""
    outputs = []
    device = _device(model)
    stop = [processor.endofchunk_token_id, processor.tokenizer.eos_token_id]
    pairs = list(zip(prompts, media))
    for chunk in _batches(pairs, batch_size, desc, progress):
        texts, items = zip(*chunk)
        items = [[load_media(m) for m in sample] for sample in items]
        batch = processor(text=list(texts), media=items, return_tensors="pt", padding_side="left")
        batch = batch.to(device)
        generated = model.generate(
            **batch, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False, eos_token_id=stop,
            pad_token_id=processor.tokenizer.pad_token_id,
        )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        outputs.extend(processor.post_process_generation(processor.batch_decode(new_tokens, skip_special_tokens=False)))
    return [o.strip() for o in outputs]


def captioning(model, processor, media: Sequence, references: Sequence[Sequence[str]], prompt: str = "<visual>",
               shots: Sequence[tuple] = (), **generate_kwargs) -> dict:
    """Caption each media item (optionally after k demonstration (media, caption) pairs); CIDEr, BLEU-4, exact match
    against `references[i]`: all reference captions of item i (a single string counts as one)."""
    references = caption_references(references)
    demo_text = "".join(f"<visual>{caption}<|endofchunk|>" for _, caption in shots)
    demo_media = [m for m, _ in shots]
    predictions = generate_texts(
        model, processor, [demo_text + prompt] * len(media), [demo_media + [m] for m in media], desc="captioning",
        **generate_kwargs,
    )
    scores = {"cider": cider_d(predictions, references)["cider"], "exact_match": exact_match(predictions, references)}
    scores["bleu4"] = bleu(predictions, references)["bleu4"]
    return {**scores, "predictions": predictions}


def vqa(model, processor, media: Sequence, questions: Sequence[str], answers: Sequence[Sequence[str]],
        shots: Sequence[tuple] = (), **generate_kwargs) -> dict:
    """VQA accuracy with the CosMo/OpenFlamingo prompt `<visual>Question:{q} Short answer:{a}<|endofchunk|>`."""
    demo_text = "".join(f"<visual>Question:{q} Short answer:{a}<|endofchunk|>" for _, q, a in shots)
    demo_media = [m for m, _, _ in shots]
    prompts = [f"{demo_text}<visual>Question:{q} Short answer:" for q in questions]
    predictions = generate_texts(
        model, processor, prompts, [demo_media + [m] for m in media], desc="vqa", **generate_kwargs
    )
    return {"vqa_accuracy": vqa_accuracy(predictions, answers), "predictions": predictions}
