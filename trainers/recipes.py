"""Pretraining recipes of the other architectures, run by `examples/pretrain.py --model_type simvlg|blip2`.

`examples/pretrain.py` holds the CosMo recipe. For another `--model_type` it hands its parsed arguments to
`run_recipe`, which runs `simvlg_recipe.pretrain_simvlg` or `blip2_recipe.pretrain_blip2`: load the data, build
model and processor, train, evaluate captioning on the held-out splits, write `eval_results.json` and the model
folder. This module holds their extra arguments and the data handling they share.
"""

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from cosmo_vl.processing import RoundRobinBatches, load_any, one_caption_per_sample

logger = logging.getLogger("pretrain")

PRESETS = {"cosmo": "cosmo-tiny", "simvlg": "simvlg-tiny", "blip2": "blip2-tiny"}
# Training arguments whose CosMo default does not suit an architecture: the Q-Former learns faster at 3e-4; both
# recipes were tuned at batch 32.
TRAINING_DEFAULTS = {"blip2": {"learning_rate": 3e-4, "per_device_train_batch_size": 32, "grit_sampler": False},
                     "simvlg": {"per_device_train_batch_size": 32, "grit_sampler": False}}


@dataclass
class RecipeArguments:
    """Options of `examples/pretrain.py` that only the SimVLG and BLIP-2 recipes read."""

    stage1_steps: int | None = field(
        default=None,
        metadata={"help": "blip2: optimizer steps of stage 1 (default: half of --max_steps); stage 2 runs the rest."},
    )
    pformer: str | None = field(
        default=None,
        metadata={"help": "blip2: a folder saved by examples/pretrain_pformer.py. Adds the P-Former alignment term "
                  "(weight 10 in stage 1, 100 in stage 2) and makes the P-Former's LM the stage-2 LM."},
    )
    freeze_vision_tower: bool | None = field(
        default=None,
        metadata={"help": "Keep the vision tower frozen (default: the config's choice for simvlg; blip2 trains the "
                  "random tower of its tiny preset, as cosmo-tiny does)."},
    )
    freeze_language_model: bool | None = field(
        default=None,
        metadata={"help": "Keep the LM frozen (default: the config's choice for simvlg; blip2 trains its random "
                  "tiny LM, a P-Former's included: BLIP-2 and P-Former freeze pretrained LMs, --freeze_language_model)."},
    )
    merge_schedule: str | None = field(
        default=None,
        metadata={"help": "simvlg: token-merge schedule over training, 'START:END' scales of the connector's "
                  "merge_r (e.g. '0:1' merges nothing at first and merge_r per layer at the end), optionally "
                  "':decreasing' for ToMe's decreasing per-layer profile."},
    )
    num_frames: int = field(default=8, metadata={"help": "Frames decoded per video clip (training and evaluation)."})


def build_processor(args, model, fallback_preset: str):
    """`--processor`, else the preset's (`fallback_preset` when `--config` is a path); with `--text_model` that
    LM's own tokenizer plus the media tokens, the model's embeddings and special-token ids resized to match."""
    from transformers import AutoProcessor, AutoTokenizer

    from cosmo_vl.presets import get_processor, list_presets

    if args.processor:
        return AutoProcessor.from_pretrained(args.processor)
    processor = get_processor(args.config if args.config in list_presets() else fallback_preset)
    if args.text_model:
        tokenizer = AutoTokenizer.from_pretrained(args.text_model)
        tokenizer.add_special_tokens({"additional_special_tokens": ["<visual>", "<|endofchunk|>"]})
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
        processor.tokenizer = tokenizer
        model.resize_token_embeddings(len(tokenizer))
        model.config.media_token_id = processor.media_token_id
        model.config.endofchunk_token_id = processor.endofchunk_token_id
    return processor


def name_and_ratio(part: str) -> tuple[str, str]:
    """'name:0.3' -> ('name', '0.3'); a part without a numeric suffix has ratio 1 (as the CosMo recipe reads it)."""
    name, _, ratio = part.rpartition(":")
    try:
        float(ratio)
    except ValueError:
        return part, "1"
    return (name, ratio) if name else (part, "1")


def apply_defaults(args, training_args, cosmo_defaults: dict):
    """Options left at the CosMo defaults become the architecture's: `--config` -> its tiny preset, the output
    folder, the card's repository id and `TRAINING_DEFAULTS`. Returns the (possibly new) training arguments."""
    defaults = {f.name: f.default for f in dataclasses.fields(args)}
    preset = PRESETS[args.model_type]
    if args.config == defaults["config"]:
        args.config = preset
    if args.repo_id == defaults["repo_id"]:
        args.repo_id = f"cosmo-vl/{preset}-shapes"
    changes = {"output_dir": f"outputs/{preset}", **TRAINING_DEFAULTS.get(args.model_type, {})}
    changes = {k: v for k, v in changes.items() if getattr(training_args, k) == cosmo_defaults.get(k)}
    return dataclasses.replace(training_args, **changes) if changes else training_args


def load_training_data(args, training_args, group_batches: bool = True):
    """(train data, {split name: held-out data}, dataset names) from `--dataset` as the CosMo recipe reads it:
    the first dataset's `test` / `test_iid` splits (else `--eval_dataset`, else a 10% split) are held out; further
    datasets are mixed in batch by batch, and the held-out splits of mixed-in video corpora are added as
    `video_<split>`."""
    specs = [name_and_ratio(part) for part in args.dataset.split(",")]
    args.dataset = specs[0][0]
    if getattr(args, "streaming", False):  # shards read lazily, resumable: trainers/streaming.py
        from .streaming import load_streaming_data

        return load_streaming_data(args, training_args, [name for name, _ in specs])
    data = load_any(args.dataset, image_column=args.image_column, text_column=args.text_column)
    train_data = data["train"]
    if args.max_train_samples:
        train_data = train_data.select(range(min(args.max_train_samples, len(train_data))))
    eval_splits = {}
    if args.eval_dataset:
        eval_all = load_any(args.eval_dataset, image_column=args.image_column, text_column=args.text_column)
        eval_splits["eval"] = eval_all["test"] if "test" in eval_all else eval_all["train"]
    elif "test" in data:
        eval_splits = {name: data[name] for name in ("test", "test_iid") if name in data}
    else:
        split = train_data.train_test_split(test_size=min(0.1, args.max_eval_samples / max(1, len(train_data))), seed=0)
        train_data, eval_splits["eval"] = split["train"], split["test"]
    train_data = one_caption_per_sample(train_data, training_args.seed)  # COCO-style caption lists: one per epoch
    if len(specs) > 1:
        extra = [load_any(name) for name, _ in specs[1:]]
        for corpus in extra:
            if "video" in corpus["train"].column_names:
                eval_splits.update({f"video_{name}": corpus[name] for name in ("test", "test_iid") if name in corpus})
        steps = training_args.max_steps if training_args.max_steps > 0 else None
        train_data = RoundRobinBatches(
            [train_data] + [one_caption_per_sample(corpus["train"], training_args.seed) for corpus in extra],
            [float(r) for _, r in specs],
            training_args.per_device_train_batch_size,
            num_batches=None if steps is None else steps * training_args.gradient_accumulation_steps
            * training_args.world_size, group=training_args.world_size, seed=training_args.seed,
            names=[name for name, _ in specs],
        )
        training_args.train_sampling_strategy = "sequential"
    if args.image_column != "image" or args.text_column != "text":
        args.image_column, args.text_column = "image", "text"  # load_any renamed them
    return train_data, eval_splits, [name for name, _ in specs]


def merge_split_results(results: dict, split_results: dict[str, dict]) -> dict:
    """`<split>/<metric>` keys for every split, and the first split's metrics again without a prefix."""
    for name, values in split_results.items():
        results.update({f"{name}/{k}": v for k, v in values.items()})
    if split_results:
        results.update(next(iter(split_results.values())))
    return results


def write_results(results: dict, output_dir) -> None:
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_results.json").write_text(json.dumps(results, indent=2))


def print_summary(results: dict, final_dir) -> None:
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, (list, dict))}, indent=2))
    print(f"Model folder: {final_dir}")


def hyperparameters(training_args, **extra) -> dict:
    """The training settings written into the model card."""
    return {
        "learning_rate": training_args.learning_rate,
        "max_steps": training_args.max_steps,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "scheduler": str(training_args.lr_scheduler_type),
        "warmup_steps": training_args.warmup_steps,
        "weight_decay": training_args.weight_decay,
        "seed": training_args.seed,
        **extra,
    }


def run_recipe(args, recipe_args: RecipeArguments, training_args, cosmo_defaults: dict) -> int:
    """Train, evaluate and save `args.model_type` ("simvlg" or "blip2") as `examples/pretrain.py` does CosMo;
    `cosmo_defaults` are the script's defaults (options left at them get the architecture's own)."""
    if args.model_type not in ("simvlg", "blip2"):
        raise ValueError(f"--model_type {args.model_type!r} is not available; use 'cosmo', 'simvlg' or 'blip2'.")
    training_args = apply_defaults(args, training_args, cosmo_defaults)
    if args.model_type == "simvlg":
        from .simvlg_recipe import pretrain_simvlg

        return pretrain_simvlg(args, recipe_args, training_args)
    from .blip2_recipe import pretrain_blip2

    return pretrain_blip2(args, recipe_args, training_args)


__all__ = ["RecipeArguments", "load_training_data", "run_recipe"]
