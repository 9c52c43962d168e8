"""Evaluate a saved CosMo folder offline on one task and write the metrics as JSON.

    python examples/evaluate.py --model outputs/cosmo-tiny/final --dataset shapes-captions --task captioning --shots 2
    python examples/evaluate.py --model DIR --dataset shapes-vqa --task vqa --shots 4 --max_samples 200
    python examples/evaluate.py --model DIR --dataset shapes-captions --task retrieval
    python examples/evaluate.py --model DIR --dataset shapes-captions --task zero-shot-classification
    python examples/evaluate.py --model DIR --dataset shapes-videos --task video-captioning --output eval.json

`--dataset` is an embedded corpus name (`cosmo_vl.processing.EMBEDDED_DATASETS`) or a local dataset in any layout
`cosmo_vl.processing.load_any` reads. Few-shot prompts use the reference formats
`<visual>Output:{caption}<|endofchunk|>` (captioning) and `<visual>Question:{q} Short answer:{a}<|endofchunk|>`
(VQA); each query gets its own `--shots` demonstrations, drawn from the train split with a fixed `--seed`.

The metric keys of the JSON (zero_shot_top1, i2t_r1, i2t_r5, t2i_r1, t2i_r5, cider, bleu4, exact_match,
vqa_accuracy) are the ones `hub_cards.build_model_card` turns into the card's model-index: save the output as the
folder's `eval_results.json` (`--output DIR/eval_results.json --merge` collects several tasks) before publishing.
"""

import argparse
import json
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

TASKS = ("captioning", "vqa", "retrieval", "zero-shot-classification", "video-captioning")
GENERATIVE = ("captioning", "vqa", "video-captioning")


# ------------------------------------------------------------------------------------------------------ prompts
def sample_demo_indices(num_queries: int, pool_size: int, shots: int, seed: int = 0) -> list[list[int]]:
    """Per query, `shots` distinct indices into the demonstration pool; the same arguments give the same draw."""
    if shots <= 0:
        return [[] for _ in range(num_queries)]
    if shots > pool_size:
        raise ValueError(f"--shots {shots} needs at least {shots} training samples, the pool has {pool_size}")
    rng = random.Random(seed)
    return [rng.sample(range(pool_size), shots) for _ in range(num_queries)]


def build_prompt(task: str, demos: Sequence[dict] = (), question: str | None = None) -> str:
    """Interleaved prompt for one query of a generative task after its demonstrations.

    captioning / video-captioning: demos are ``{"text": caption}``, each rendered
    ``<visual>Output:{caption}<|endofchunk|>``, then ``<visual>Output:`` for the query.
    vqa: demos are ``{"question": q, "answer": a}``, each ``<visual>Question:{q} Short answer:{a}<|endofchunk|>``,
    then ``<visual>Question:{question} Short answer:``.
    """
    from cosmo_vl.processing import caption_prompt, vqa_prompt

    if task in ("captioning", "video-captioning"):
        return caption_prompt([d["text"] for d in demos])
    if task == "vqa":
        if question is None:
            raise ValueError("vqa prompts need the query question")
        return vqa_prompt([(d["question"], _first(d["answer"])) for d in demos], question)
    raise ValueError(f"{task!r} has no generation prompt; generative tasks: {GENERATIVE}")


def _first(answer):
    return answer[0] if isinstance(answer, (list, tuple)) else answer


def _as_list(answer) -> list[str]:
    return [str(a) for a in answer] if isinstance(answer, (list, tuple)) else [str(answer)]


# --------------------------------------------------------------------------------------------------------- data
def load_splits(args):
    """(eval split, demo pool or None) of --dataset."""
    from cosmo_vl.processing import EMBEDDED_DATASETS, load_any

    kwargs = {}
    if args.dataset in EMBEDDED_DATASETS:
        kwargs = {k: v for k, v in (("cache_dir", args.cache_dir), ("num_train", args.num_train),
                                    ("num_test", args.num_test)) if v is not None}
    elif args.task == "video-captioning":
        kwargs = {"kind": "video_text", "video_column": args.video_column, "text_column": args.text_column}
        args.video_column, args.text_column = "video", "text"  # the loader renames them
    else:
        # image-text layout; for VQA the question is read as the text (the answer column is kept as is)
        text = args.question_column if args.task == "vqa" else args.text_column
        kwargs = {"kind": "image_text", "image_column": args.image_column, "text_column": text}
        args.image_column = "image"
        if args.task == "vqa":
            args.question_column = "text"
        else:
            args.text_column = "text"
    data = load_any(args.dataset, **kwargs)
    split = args.split if args.split in data else ("test" if "test" in data else "train")
    evaluation_data = data[split]
    if args.max_samples:
        evaluation_data = evaluation_data.select(range(min(args.max_samples, len(evaluation_data))))
    demo_pool = data[args.demo_split] if args.demo_split in data else None
    if args.shots and demo_pool is None:
        raise ValueError(f"--shots needs a {args.demo_split!r} split in {args.dataset}; splits: {list(data)}")
    if demo_pool is not None and args.max_demo_pool:
        demo_pool = demo_pool.select(range(min(args.max_demo_pool, len(demo_pool))))
    return evaluation_data, demo_pool


def _read_videos(paths: Sequence[str], num_frames: int, desc: str) -> list:
    from cosmo_vl.processing import read_video

    return [read_video(p, num_frames=num_frames) for p in tqdm(paths, desc=desc, leave=False)]


def _column(data, *names: str) -> str:
    for name in names:
        if name in data.column_names:
            return name
    raise KeyError(f"none of the columns {names} in the data (columns: {data.column_names})")


# -------------------------------------------------------------------------------------------------------- tasks
def run_generative(model, processor, data, demo_pool, args) -> dict:
    from cosmo_vl import evaluation
    from cosmo_vl.metrics import bleu, cider_d, exact_match, vqa_accuracy

    task = args.task
    video = task == "video-captioning"
    media_column = _column(data, args.video_column) if video else _column(data, args.image_column, "image")
    demo_ids = sample_demo_indices(len(data), len(demo_pool) if demo_pool is not None else 0, args.shots, args.seed)
    used = sorted({i for ids in demo_ids for i in ids})
    # Decode only the demonstrations that were drawn.
    demo_rows = {i: demo_pool[i] for i in used}
    if video:
        demo_media = dict(zip(used, _read_videos([demo_rows[i][media_column] for i in used], args.num_frames,
                                                 "demo clips")))
        query_media = _read_videos(data[media_column], args.num_frames, "clips")
    else:
        demo_media = {i: demo_rows[i][media_column] for i in used}
        query_media = data[media_column]

    if task == "vqa":
        questions = data[_column(data, args.question_column)]
        answers = [_as_list(a) for a in data[_column(data, args.answer_column)]]
        demo_rows = {i: {"question": r[args.question_column], "answer": r[args.answer_column]}
                     for i, r in demo_rows.items()}
    else:
        questions = [None] * len(data)
        answers = [_as_list(t) for t in data[_column(data, args.text_column)]]
        demo_rows = {i: {"text": r[args.text_column]} for i, r in demo_rows.items()}

    prompts = [build_prompt(task, [demo_rows[i] for i in ids], q) for ids, q in zip(demo_ids, questions)]
    media = [[demo_media[i] for i in ids] + [m] for ids, m in zip(demo_ids, query_media)]
    predictions = evaluation.generate_texts(
        model, processor, prompts, media, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams, desc=task,
    )
    if task == "vqa":
        # not `exact_match`: the model card reads that key as a captioning metric
        results = {"vqa_accuracy": vqa_accuracy(predictions, answers),
                   "vqa_exact_match": exact_match(predictions, answers)}
    else:
        results = {"cider": cider_d(predictions, answers)["cider"], "bleu4": bleu(predictions, answers)["bleu4"],
                   "exact_match": exact_match(predictions, answers)}
    results["examples"] = [
        {"prompt": p, **({"question": q} if q is not None else {}), "references": r, "prediction": o}
        for p, q, r, o in list(zip(prompts, questions, answers, predictions))[: args.num_examples]
    ]
    return results


def run_retrieval(model, processor, data, args) -> dict:
    """Image<->text retrieval over the distinct captions: an image's positives are its own captions (one or a list)."""
    from cosmo_vl import evaluation
    from cosmo_vl.processing import retrieval_targets

    images = data[_column(data, args.image_column, "image")]
    unique, targets = retrieval_targets(data[_column(data, args.text_column)])
    results = evaluation.retrieval(model, processor, images, unique, image_to_text=targets, batch_size=args.batch_size)
    results["num_texts"] = len(unique)
    return results


def class_prompts(data, dataset: str, template: str, style: str = "ensemble") -> tuple[list, str]:
    """(per-class prompts, reduce) for zero-shot classification. Embedded corpora: with style "ensemble" their
    prompt ensembles, scored by the best prompt (they spell out every nuisance attribute); with "names" one
    prompt per class name (faster). Other data: the ClassLabel names of `label` in `template`."""
    from cosmo_vl.processing import zero_shot_classes, zero_shot_prompts

    if style not in ("ensemble", "names"):
        raise ValueError(f"unknown class prompt style {style!r}")
    prompts = zero_shot_prompts(dataset) if style == "ensemble" else zero_shot_classes(dataset)
    if prompts:
        return prompts, "max" if style == "ensemble" else "mean"
    feature = data.features.get("label")
    names = getattr(feature, "names", None)
    if not names:
        raise ValueError("zero-shot classification needs a ClassLabel `label` column or an embedded corpus")
    return [template.format(n) for n in names], "mean"


def run_zero_shot(model, processor, data, args) -> dict:
    from cosmo_vl import evaluation

    label_column = _column(data, args.label_column)
    prompts, reduce = class_prompts(data, args.dataset, args.class_template, args.class_prompts)
    labels = data[label_column]
    keep = [i for i, label in enumerate(labels) if label is not None and label >= 0]
    if not keep:
        raise ValueError("no sample with a class label (label >= 0) to classify")
    images = data[_column(data, args.image_column, "image")]
    results = evaluation.zero_shot_classification(
        model, processor, [images[i] for i in keep], [labels[i] for i in keep], prompts, reduce=reduce,
        batch_size=args.batch_size,
    )
    results["num_labelled"] = len(keep)
    return results


# --------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Saved model folder (or Hub id).")
    p.add_argument("--dataset", required=True, help="Embedded corpus name or local dataset path.")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--shots", type=int, default=0, help="Demonstrations per query (generative tasks).")
    p.add_argument("--max_samples", type=int, default=None, help="Evaluate only the first N samples.")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--output", default=None, help="Write the JSON here (always printed too).")
    p.add_argument("--merge", action="store_true", help="Update an existing --output JSON instead of replacing it.")
    p.add_argument("--split", default="test", help="Evaluation split (falls back to test, then train).")
    p.add_argument("--demo_split", default="train", help="Split the demonstrations are drawn from.")
    p.add_argument("--max_demo_pool", type=int, default=None, help="Draw demonstrations from the first N only.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the demonstration draw.")
    p.add_argument("--max_new_tokens", type=int, default=20)
    p.add_argument("--num_beams", type=int, default=1)
    p.add_argument("--num_frames", type=int, default=8, help="Frames decoded per clip (video-captioning).")
    p.add_argument("--num_examples", type=int, default=8, help="Predictions kept in the JSON.")
    p.add_argument("--image_column", default="image")
    p.add_argument("--video_column", default="video")
    p.add_argument("--text_column", default="text")
    p.add_argument("--question_column", default="question")
    p.add_argument("--answer_column", default="answer")
    p.add_argument("--label_column", default="label")
    p.add_argument("--class_prompts", default="ensemble", choices=("ensemble", "names"),
                   help="Embedded corpora: every caption of a class (best one scores) or just the class name.")
    p.add_argument("--class_template", default="a photo of {}.", help="Zero-shot prompt for local label names.")
    p.add_argument("--cache_dir", default=None, help="Embedded corpora: cache folder.")
    p.add_argument("--num_train", type=int, default=None, help="Embedded corpora: train split size.")
    p.add_argument("--num_test", type=int, default=None, help="Embedded corpora: test split size.")
    p.add_argument("--device", default=None, help="Default: cuda when available, else cpu.")
    args = p.parse_args(argv)
    if args.shots and args.task not in GENERATIVE:
        p.error(f"--shots applies to {', '.join(GENERATIVE)}")
    if args.shots < 0:
        p.error("--shots must be >= 0")
    return args


def load_model(path, device=None):
    import cosmo_vl  # noqa: F401 - registers the family with the Auto classes
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=False).to(device).eval()
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=False)
    return model, processor


def evaluate(args) -> dict:
    model, processor = load_model(args.model, args.device)
    data, demo_pool = load_splits(args)
    if args.task in GENERATIVE:
        metrics = run_generative(model, processor, data, demo_pool, args)
    elif args.task == "retrieval":
        metrics = run_retrieval(model, processor, data, args)
    else:
        metrics = run_zero_shot(model, processor, data, args)
    return {"task": args.task, "dataset": args.dataset, "shots": args.shots, "num_samples": len(data),
            "seed": args.seed, **metrics}


def main(argv=None) -> int:
    args = parse_args(argv)
    results = evaluate(args)
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        previous = json.loads(out.read_text()) if args.merge and out.is_file() else {}
        out.write_text(json.dumps({**previous, **results}, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "examples"}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
