"""SimVLG pretraining recipe (`examples/pretrain.py --model_type simvlg`): LM loss only, captioning evaluation."""

import logging
from pathlib import Path

import cosmo_vl
from cosmo_vl import evaluation
from cosmo_vl.hub_cards import build_model_card
from cosmo_vl.modeling import MergeSchedule, SimVlgConfig, SimVlgForConditionalGeneration, trainable_parameters
from cosmo_vl.presets import get_config, list_presets
from cosmo_vl.processing import VLCollator, caption_references, read_video

from .callbacks import AttributeScheduleCallback
from .checkpoints import resolve_resume
from .cosmo_trainer import CosmoTrainer
from .recipes import build_processor, hyperparameters, load_training_data, merge_split_results, print_summary, write_results

logger = logging.getLogger("pretrain")

# Tasks of the CosMo evaluation that need a contrastive head (SimVLG has none).
SKIPPED_TASKS = {
    "zero_shot_classification": "skipped: SimVLG has no contrastive head (single LM loss)",
    "retrieval": "skipped: SimVLG has no contrastive head (single LM loss)",
}


def build_model(args, recipe_args) -> SimVlgForConditionalGeneration:
    """A preset or config folder with random weights, or pretrained towers (`--vision_model` + `--text_model`)."""
    if args.vision_model or args.text_model:
        if not (args.vision_model and args.text_model):
            raise ValueError("Pass both --vision_model and --text_model to start from pretrained towers.")
        model = SimVlgForConditionalGeneration.from_backbones(vision=args.vision_model, text=args.text_model)
    else:
        config = get_config(args.config) if args.config in list_presets() else SimVlgConfig.from_pretrained(args.config)
        if config.model_type != "simvlg":
            raise ValueError(f"--config {args.config!r} is a {config.model_type!r} config, not a SimVLG one.")
        model = SimVlgForConditionalGeneration(config)
    for name in ("freeze_vision_tower", "freeze_language_model"):
        if getattr(recipe_args, name) is not None:
            setattr(model.config, name, getattr(recipe_args, name))
    model.model.apply_freezing()
    model.lm_head.requires_grad_(not model.config.freeze_language_model)
    return model


def merge_schedule_callback(model, spec: str) -> AttributeScheduleCallback:
    """'START:END[:decreasing]' -> a `MergeSchedule` on the connector (merge_r scaled from START to END) and the
    callback that moves its progress from 0 to 1 over training."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("constant", "decreasing")):
        raise ValueError(f"--merge_schedule {spec!r}: expected 'START:END' or 'START:END:decreasing'.")
    r = model.config.merge_r
    profile = parts[2] if len(parts) == 3 else "constant"
    if profile == "decreasing" and not isinstance(r, int):
        raise ValueError("--merge_schedule ...:decreasing needs an int merge_r in the config.")
    model.merge_schedule = MergeSchedule(r, layer_profile=profile, start_scale=float(parts[0]), end_scale=float(parts[1]))
    return AttributeScheduleCallback("merge_schedule.progress", "linear", 0.0, 1.0)


def freeze_merge_schedule(model) -> None:
    """Write the schedule's final per-layer r into the config (what the saved model merges) and drop it."""
    schedule = model.merge_schedule
    if schedule is None:
        return
    schedule.set_progress(1.0)
    per_layer = schedule.per_layer(model.config.connector_num_layers)
    model.config.merge_r = per_layer[0] if len(set(per_layer)) == 1 else per_layer
    model.merge_schedule = None


def evaluate_split(model, processor, data, max_samples: int, num_frames: int) -> dict:
    """Captioning (CIDEr, BLEU-4, exact match) of the images or video clips of one held-out split."""
    data = data.select(range(min(len(data), max_samples)))
    if "video" in data.column_names:
        media = [read_video(path, num_frames=num_frames) for path in data["video"]]
    else:
        media = data["image"]
    captions = data["text"]  # a caption or a list of captions per item: all are references
    caption = evaluation.captioning(model, processor, media, caption_references(captions))
    results = {"num_samples": len(data), **{k: v for k, v in caption.items() if k != "predictions"}}
    results["examples"] = [{"reference": r, "prediction": p} for r, p in zip(captions[:8], caption["predictions"][:8])]
    return results


def save_folder(model, processor, results: dict, args, training_args, datasets: list[str]) -> Path:
    """Hub-ready folder: safetensors, config with `auto_map` and the remote-code files, processor, card."""
    final_dir = Path(args.final_dir or Path(training_args.output_dir) / "final")
    cosmo_vl.enable_remote_code(model, processor)
    model.save_pretrained(final_dir)
    processor.save_pretrained(final_dir)
    card = build_model_card(
        model, args.repo_id, eval_results=results, dataset_name=args.dataset, datasets=datasets,
        hyperparameters=hyperparameters(training_args, merge_r=str(model.config.merge_r)),
    )
    card.save(final_dir / "README.md")
    write_results(results, final_dir)
    return final_dir


def pretrain_simvlg(args, recipe_args, training_args) -> int:
    model = build_model(args, recipe_args)
    processor = build_processor(args, model, fallback_preset="simvlg-tiny")
    trainable, total, fraction = trainable_parameters(model)
    logger.info("model: %s, trainable %d / %d parameters (%.1f%%)", args.config, trainable, total, 100 * fraction)

    train_data, eval_splits, datasets = load_training_data(args, training_args)
    callbacks = [merge_schedule_callback(model, recipe_args.merge_schedule)] if recipe_args.merge_schedule else []
    collator = VLCollator(
        processor, image_column=args.image_column, text_column=args.text_column, max_length=args.max_length,
        truncation=True, on_error="skip", num_frames=recipe_args.num_frames,
    )
    trainer = CosmoTrainer(
        model=model, args=training_args, train_dataset=train_data, data_collator=collator,
        processing_class=processor, callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir))
    freeze_merge_schedule(model)

    if trainer.is_world_process_zero() and args.final_evaluation:
        model.eval()
        results = {"train_runtime_s": trainer.state.log_history[-1].get("train_runtime"), "skipped_tasks": SKIPPED_TASKS}
        split_results = {
            name: evaluate_split(model, processor, split, args.max_eval_samples, recipe_args.num_frames)
            for name, split in eval_splits.items()
        }
        merge_split_results(results, split_results)
        results["skipped_samples"] = dict(collator.stats.counts)
        write_results(results, training_args.output_dir)
        print_summary(results, save_folder(model, processor, results, args, training_args, datasets))
    return 0


__all__ = ["SKIPPED_TASKS", "pretrain_simvlg"]
