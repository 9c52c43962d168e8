"""Pretrain a CosMo model, evaluate it on held-out data, and save a Hub-ready folder.

    accelerate launch examples/pretrain.py                       # cosmo-tiny on the embedded generated data
    accelerate launch examples/pretrain.py --model_type simvlg   # SimVLG (simvlg-tiny); blip2 [--pformer DIR]: BLIP-2
    accelerate launch examples/pretrain.py --dataset path/to/imagefolder --image_column image --text_column text
    accelerate launch --num_processes 2 --cpu examples/pretrain.py --max_steps 200   # DDP (gloo)
    accelerate launch examples/pretrain.py --dataset shards/ --streaming --max_steps 10000   # lazy parquet/tar shards
    accelerate launch examples/pretrain.py --vision_model openai/clip-vit-large-patch14 --text_model facebook/opt-iml-1.3b

Every TrainingArguments option is accepted (`--learning_rate`, `--resume_from_checkpoint`, `--bf16`, ...).
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, set_seed

import cosmo_vl
from cosmo_vl import evaluation
from cosmo_vl.hub_cards import build_model_card
from cosmo_vl.modeling import CosmoConfig, CosmoForConditionalGeneration, trainable_parameters
from cosmo_vl.presets import get_config, list_presets
from cosmo_vl.processing import EMBEDDED_DATASETS, VLCollator, zero_shot_prompts
from cosmo_vl.processing.captions import caption_references, retrieval_targets
from cosmo_vl.trainers import CosmoTrainer, CosmoTrainingArguments, resolve_resume
from cosmo_vl.trainers.recipes import (
    RecipeArguments, build_processor, hyperparameters, load_training_data, merge_split_results, run_recipe,
)
from cosmo_vl.trainers.dataloader_defaults import auto_dataloader_workers, usable_cores
from cosmo_vl.trainers.sharding import check_launch, unsharded_model

logger = logging.getLogger("pretrain")


@dataclass
class ScriptArguments:
    model_type: str = field(
        default="cosmo", metadata={"help": "Architecture: cosmo, simvlg or blip2 (see cosmo_vl.trainers.recipes)."}
    )
    config: str = field(default="cosmo-tiny", metadata={"help": f"Preset ({', '.join(list_presets())}) or config path."})
    vision_model: str | None = field(default=None, metadata={"help": "Pretrained vision tower (path or Hub id)."})
    text_model: str | None = field(default=None, metadata={"help": "Pretrained causal LM (path or Hub id)."})
    processor: str | None = field(default=None, metadata={"help": "Processor folder (default: the preset's)."})
    dataset: str = field(
        default="shapes-captions",
        metadata={"help": "Embedded dataset name or a local path; several, mixed batch by batch with ratios, as "
                  "'shapes-captions:1,shapes-interleaved:0.3,shapes-videos:0.3' (evaluation uses the first)."},
    )
    eval_dataset: str | None = field(default=None, metadata={"help": "Held-out data (default: the test split)."})
    image_column: str = field(default="image", metadata={"help": "Image column of --dataset."})
    text_column: str = field(default="text", metadata={"help": "Caption column of --dataset."})
    max_eval_samples: int = field(default=500, metadata={"help": "Held-out samples used by the final evaluation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training samples."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the training shards lazily (needs --max_steps): each process its own shards, order "
                  "seeded by --seed, exact resume with --resume_from_checkpoint last (cosmo_vl/trainers/streaming.py)."},
    )
    shuffle_buffer_size: int = field(default=1000, metadata={"help": "--streaming: samples shuffled together."})
    final_evaluation: bool = field(default=True, metadata={"help": "Evaluate and write the Hub folder at the end."})
    max_length: int = field(default=64, metadata={"help": "Longest token sequence; longer samples are truncated."})
    final_dir: str | None = field(default=None, metadata={"help": "Hub-ready folder (default: OUTPUT_DIR/final)."})
    repo_id: str = field(default="cosmo-vl/cosmo-tiny-shapes", metadata={"help": "Repository id written in the card."})
    num_threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads of a single-process CPU run (default: every core this process may use; "
                  "`accelerate launch` on a machine without a GPU would leave it one)."},
    )


# Defaults of the no-argument run: cosmo-tiny from scratch on the embedded data (measured figures: README.md).
DEFAULTS = dict(
    output_dir="outputs/cosmo-tiny",
    max_steps=2500,
    per_device_train_batch_size=64,
    learning_rate=1e-3,
    warmup_steps=150,
    lr_scheduler_type="cosine",
    weight_decay=0.01,
    max_grad_norm=1.0,
    logging_steps=25,
    save_strategy="steps",
    save_steps=500,
    save_total_limit=2,
    report_to=["tensorboard"],
    dataloader_num_workers=0,
    seed=0,
    remove_unused_columns=False,
    # GRIT-VLP batches of hard negatives from the second epoch on: random batches of 64 rarely hold two captions that
    # differ only in the shape, so zero-shot shape errors went unpunished. Search groups of 1,280 pairs (20 batches):
    # groups of 100 batches made whole batches of near-identical scenes, 16 points below random batches (README).
    grit_sampler=True,
    grit_search_size=1280,
)


def use_cpu_threads(num_threads: int | None, training_args) -> None:
    """A single CPU process gets every core: `accelerate launch` sets OMP_NUM_THREADS=1 when it finds no GPU and no
    `--cpu` flag, which halves the default run's speed on 2 cores. Several processes keep accelerate's split."""
    if training_args.device.type != "cpu" or training_args.world_size > 1:
        return
    torch.set_num_threads(max(1, num_threads or usable_cores()))
    logger.info("CPU threads: %d", torch.get_num_threads())


def build_model(args: ScriptArguments) -> CosmoForConditionalGeneration:
    if args.model_type != "cosmo":
        raise ValueError(f"--model_type {args.model_type!r} is not available; use 'cosmo'.")
    if args.vision_model or args.text_model:
        if not (args.vision_model and args.text_model):
            raise ValueError("Pass both --vision_model and --text_model to start from pretrained towers.")
        return CosmoForConditionalGeneration.from_backbones(vision=args.vision_model, text=args.text_model)
    config = get_config(args.config) if args.config in list_presets() else CosmoConfig.from_pretrained(args.config)
    return CosmoForConditionalGeneration(config)


def evaluate_split(model, processor, data, args: ScriptArguments) -> dict:
    """Zero-shot classification, image<->text retrieval and captioning on one held-out split."""
    data = data.select(range(min(len(data), args.max_eval_samples)))
    images, captions = data[args.image_column], data[args.text_column]
    results: dict = {"num_samples": len(data)}
    prompts = zero_shot_prompts(args.dataset) if args.dataset in EMBEDDED_DATASETS else None
    if prompts and "label" in data.column_names:
        # Class prompts spell out every size/position/count/background; a class scores by its best prompt.
        keep = [i for i, label in enumerate(data["label"]) if label is not None and label >= 0]
        results.update(evaluation.zero_shot_classification(
            model, processor, [images[i] for i in keep], [data["label"][i] for i in keep], prompts, reduce="max"))
    # Retrieval over the distinct captions: an image's positives are its own caption texts (all, with several).
    unique, targets = retrieval_targets(captions)
    results.update(evaluation.retrieval(model, processor, images, unique, text_to_image=None, image_to_text=targets))
    caption = evaluation.captioning(model, processor, images, caption_references(captions))
    results.update({k: v for k, v in caption.items() if k != "predictions"})
    results["examples"] = [{"reference": r, "prediction": p} for r, p in zip(captions[:8], caption["predictions"][:8])]
    return results


def save_hub_folder(model, processor, results: dict, args: ScriptArguments, training_args) -> Path:
    final_dir = Path(args.final_dir or Path(training_args.output_dir) / "final")
    cosmo_vl.enable_remote_code(model, processor)
    model.save_pretrained(final_dir)
    processor.save_pretrained(final_dir)
    hyper = hyperparameters(training_args)
    card = build_model_card(
        model, args.repo_id, eval_results=results, dataset_name=args.dataset, datasets=[args.dataset],
        hyperparameters=hyper,
    )
    card.save(final_dir / "README.md")
    (final_dir / "eval_results.json").write_text(json.dumps(results, indent=2))
    return final_dir


def main(argv=None, callbacks=None):
    """Run the recipe; `callbacks` (TrainerCallback instances) join the CosMo trainer's, e.g. a `StepTimer`."""
    parser = HfArgumentParser((ScriptArguments, RecipeArguments, CosmoTrainingArguments))
    parser.set_defaults(**DEFAULTS)
    args, recipe_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO if training_args.process_index == 0 else logging.WARNING)
    check_launch(training_args)
    use_cpu_threads(args.num_threads, training_args)
    set_seed(training_args.seed)
    if args.model_type != "cosmo":  # SimVLG and BLIP-2: cosmo_vl/trainers/{simvlg,blip2}_recipe.py
        return run_recipe(args, recipe_args, training_args, cosmo_defaults=DEFAULTS)

    model = build_model(args)
    processor = build_processor(args, model, fallback_preset="cosmo-tiny")
    trainable, total, fraction = trainable_parameters(model)
    logger.info("model: %s, trainable %d / %d parameters (%.1f%%)", args.config, trainable, total, 100 * fraction)

    train_data, eval_splits, _ = load_training_data(args, training_args)
    auto_dataloader_workers(training_args, sys.argv[1:] if argv is None else argv, train_data)  # GPU only
    # CosMo's evaluation here is image-based; held-out video splits are evaluated with examples/evaluate.py.
    eval_splits = {name: split for name, split in eval_splits.items() if not name.startswith("video_")}

    collator = VLCollator(
        processor, image_column=args.image_column, text_column=args.text_column, max_length=args.max_length,
        truncation=True, on_error="skip",
    )
    trainer = CosmoTrainer(
        model=model, args=training_args, train_dataset=train_data, data_collator=collator,
        processing_class=processor, callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir))

    if args.final_evaluation:  # FSDP / ZeRO-3: every process hands its shards to the main one
        model = unsharded_model(trainer, model)
    if trainer.is_world_process_zero() and args.final_evaluation:
        model.eval()
        results = {"train_runtime_s": trainer.state.log_history[-1].get("train_runtime")}
        merge_split_results(results, {name: evaluate_split(model, processor, split, args)
                                      for name, split in eval_splits.items()})
        results["skipped_samples"] = dict(collator.stats.counts)
        out = Path(training_args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_results.json").write_text(json.dumps(results, indent=2))
        final_dir = save_hub_folder(model, processor, results, args, training_args)
        print(json.dumps({k: v for k, v in results.items() if not isinstance(v, (list, dict))}, indent=2))
        print(f"Hub-ready folder: {final_dir}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
