"""BLIP-2 pretraining recipe (`examples/pretrain.py --model_type blip2 [--pformer DIR]`).

Stage 1 trains the Q-Former on image-caption pairs (ITC + ITM + image-grounded generation), stage 2 puts the LM
behind its projected queries (generative loss); with `--pformer` both stages add the P-Former alignment term and
the P-Former's LM becomes the stage-2 LM. Every model is transformers' own (`Blip2ForImageTextRetrieval`, then
`Blip2ForConditionalGeneration`) inside `Blip2StageModel`. Outputs, under `--output_dir`:

    stage1/final/       Blip2ForImageTextRetrieval folder + blip2_stage1_heads.safetensors (ITG head, temperature,
                        P-Former projection) + processor
    final/              Blip2ForConditionalGeneration folder (`AutoModelForImageTextToText.from_pretrained` loads it,
                        no remote code), Blip2Processor, model card, eval_results.json
    eval_results.json   captioning CIDEr / BLEU-4 / exact match per held-out split
"""

import copy
import dataclasses
import logging
import os
import zlib
from pathlib import Path

import safetensors.torch
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Blip2Config, Blip2ForImageTextRetrieval

from cosmo_vl.hub_cards import build_model_card
from cosmo_vl.metrics import bleu, cider_d, exact_match
from cosmo_vl.modeling import PFormerModel, trainable_parameters
from cosmo_vl.presets import BLIP2_IMAGE_TOKEN, get_config, get_processor, list_presets
from cosmo_vl.processing import caption_references, load_image

from .blip2_stages import Blip2StageModel
from .checkpoints import TRAINING_ARGS_FILE, last_complete_checkpoint, resolve_resume
from .recipes import hyperparameters, load_training_data, merge_split_results, print_summary, write_results
from .vl_trainer import VLTrainer

logger = logging.getLogger("pretrain")

SKIPPED_TASKS = {
    "zero_shot_classification": "skipped: not part of the BLIP-2 recipe (captioning only)",
    "retrieval": "skipped: not part of the BLIP-2 recipe (the stage-1 ITC head is saved in stage1/final)",
}


class Blip2PairCollator:
    """Image-caption pairs -> `pixel_values`, caption ids (`BOS caption EOS`, right padded, in the LM/Q-Former
    tokenizer), `labels` (padding and BOS set to -100, so the Trainer's token count is exact in both stages),
    `image_ids` (a hash of the caption: identical captions are never ITM negatives of each other) and, with a
    P-Former tokenizer, `pformer_input_ids` / `pformer_attention_mask`."""

    def __init__(self, processor, max_length: int, pformer_tokenizer=None, image_column="image", text_column="text"):
        self.processor, self.max_length, self.pformer_tokenizer = processor, max_length, pformer_tokenizer
        self.image_column, self.text_column = image_column, text_column

    def __call__(self, rows: list[dict]) -> dict:
        tokenizer = self.processor.tokenizer
        captions = [row[self.text_column].strip() for row in rows]
        images = [load_image(row[self.image_column]) for row in rows]
        text = tokenizer([c + tokenizer.eos_token for c in captions], padding=True, truncation=True,
                         max_length=self.max_length, return_tensors="pt")
        labels = text["input_ids"].masked_fill(~text["attention_mask"].bool(), -100)
        labels[:, 0] = -100
        batch = {
            "pixel_values": self.processor.image_processor(images, return_tensors="pt")["pixel_values"],
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "labels": labels,
            "image_ids": torch.tensor([zlib.crc32(c.encode()) for c in captions], dtype=torch.long),
        }
        if self.pformer_tokenizer is not None:
            enc = self.pformer_tokenizer(captions, padding=True, truncation=True, max_length=self.max_length,
                                         return_tensors="pt")
            batch["pformer_input_ids"], batch["pformer_attention_mask"] = enc["input_ids"], enc["attention_mask"]
        return batch


class Blip2StageTrainer(VLTrainer):
    """`VLTrainer` for a `Blip2StageModel` (a plain module whose LM ties its embeddings and head, which the
    Trainer's `save_file` of the state dict refuses): the weights go through safetensors' `save_model`, which
    stores a tied tensor once; `Trainer` resumes from that file as it is (non-strict `load_state_dict`)."""

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        safetensors.torch.save_model(model, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        Path(output_dir, TRAINING_ARGS_FILE).write_text(self.args.to_json_string())

    def _issue_warnings_after_load(self, load_result) -> None:
        """A tied tensor was stored under one of its names: the others are reported missing but share its storage
        (the Trainer's own check reads `_keys_to_ignore_on_save`, which a plain module lacks)."""
        state = self.accelerator.unwrap_model(self.model).state_dict()
        missing = set(load_result.missing_keys)
        loaded = {state[k].data_ptr() for k in state if k not in missing}
        untied = [k for k in load_result.missing_keys if state[k].data_ptr() not in loaded]
        if untied:
            logger.warning("There were missing keys in the checkpoint model loaded: %s.", untied)
        if load_result.unexpected_keys:
            logger.warning("There were unexpected keys in the checkpoint model loaded: %s.", load_result.unexpected_keys)


# ---------------------------------------------------------------------------------------------------- builders
def load_pformer(path: str):
    """(frozen P-Former, its encoder tokenizer, the tokenizer of its LM) from a `pretrain_pformer.py` folder."""
    pformer = PFormerModel.from_pretrained(path).eval()
    encoder_tokenizer = AutoTokenizer.from_pretrained(path)
    lm_dir = Path(path) / "lm_tokenizer"
    lm_tokenizer = AutoTokenizer.from_pretrained(lm_dir) if lm_dir.is_dir() else encoder_tokenizer
    return pformer, encoder_tokenizer, lm_tokenizer


def build_config(args, tokenizer, pformer=None) -> Blip2Config:
    """The preset (or a `Blip2Config` folder) fitted to the tokenizer (vocabularies, `<image>` id), with a stage-1
    Q-Former (text input) and, with a P-Former, its number of prompts as the number of queries."""
    if args.vision_model or args.text_model:
        raise ValueError("--model_type blip2 builds from --config (tiny towers); pretrained towers are not wired yet.")
    config = get_config(args.config) if args.config in list_presets() else Blip2Config.from_pretrained(args.config)
    if config.model_type != "blip-2":
        raise ValueError(f"--config {args.config!r} is a {config.model_type!r} config, not a BLIP-2 one.")
    config.qformer_config.use_qformer_text_input = True
    config.qformer_config.vocab_size = len(tokenizer)
    config.image_token_index = tokenizer.convert_tokens_to_ids(BLIP2_IMAGE_TOKEN)
    if pformer is not None:
        config.num_query_tokens = pformer.config.num_prompts
        config.text_config = copy.deepcopy(pformer.language_model.config)
    config.text_config.vocab_size = len(tokenizer)
    return config


def build_stage1(config: Blip2Config, pformer=None, freeze_vision: bool = False) -> Blip2StageModel:
    """A fresh stage-1 model. transformers initialises the query tokens to zeros (pretrained checkpoints overwrite
    them); from scratch, identical all-zero queries meet a LayerNorm with eps 1e-12 and the gradients explode, so
    they are drawn from N(0, initializer_range) as BLIP-2's own code does."""
    blip2 = Blip2ForImageTextRetrieval(config)
    with torch.no_grad():
        blip2.query_tokens.normal_(0.0, config.qformer_config.initializer_range)
    return Blip2StageModel(blip2, pformer=pformer, freeze_vision_model=freeze_vision)


def stage2_language_model(config: Blip2Config, pformer=None):
    """The stage-2 LM: a copy of the P-Former's (the LM its prompts were trained for), else a fresh one from
    `config.text_config`; its vocabulary grown to the tokenizer's (for `<image>`)."""
    if pformer is None:
        return AutoModelForCausalLM.from_config(config.text_config)
    lm = copy.deepcopy(pformer.language_model)
    if lm.get_input_embeddings().num_embeddings < config.text_config.vocab_size:
        lm.resize_token_embeddings(config.text_config.vocab_size, mean_resizing=False)
    lm.requires_grad_(True)
    return lm


def stage_arguments(training_args, stage: int, steps: int, total_steps: int):
    """Training arguments of one stage: its own output folder and step count, warmup scaled to its share."""
    warmup = round(training_args.warmup_steps * steps / max(total_steps, 1))
    return dataclasses.replace(
        training_args, output_dir=str(Path(training_args.output_dir) / f"stage{stage}"), max_steps=steps,
        warmup_steps=warmup,
    )


# -------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def generate_captions(blip2, processor, images, batch_size: int = 32, max_new_tokens: int = 20) -> list[str]:
    """Greedy captions from `Blip2ForConditionalGeneration.generate` (prompt: the query placeholders + BOS)."""
    tokenizer = processor.tokenizer
    device = next(blip2.parameters()).device
    prompt_length = blip2.config.num_query_tokens + 1
    captions = []
    for start in range(0, len(images), batch_size):
        chunk = [load_image(image) for image in images[start : start + batch_size]]
        pixel_values = processor.image_processor(chunk, return_tensors="pt")["pixel_values"].to(device)
        out = blip2.generate(pixel_values=pixel_values, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        captions.extend(t.strip() for t in tokenizer.batch_decode(out[:, prompt_length:], skip_special_tokens=True))
    return captions


def evaluate_split(blip2, processor, data, max_samples: int) -> dict:
    """Captioning CIDEr, BLEU-4 and exact match on one held-out split of image-caption pairs."""
    data = data.select(range(min(len(data), max_samples)))
    captions = data["text"]  # a caption or a list of captions per image: all are references
    references = caption_references(captions)
    predictions = generate_captions(blip2, processor, data["image"])
    return {
        "num_samples": len(data),
        "cider": cider_d(predictions, references)["cider"],
        "exact_match": exact_match(predictions, references),
        "bleu4": bleu(predictions, references)["bleu4"],
        "examples": [{"reference": r, "prediction": p} for r, p in zip(captions[:8], predictions[:8])],
    }


# -------------------------------------------------------------------------------------------------------- main
def resume_points(resume, stage1_dir: str, stage2_dir: str) -> tuple[str | None, str | None]:
    """(stage-1, stage-2) checkpoints to resume from. "last" / "true": stage 2's newest complete checkpoint when
    there is one (stage 1 is then done), else stage 1's; an explicit checkpoint resumes the stage that wrote it."""
    if resume is None or str(resume).lower() in ("", "false", "none"):
        return None, None
    if str(resume).lower() in ("true", "last"):
        found = last_complete_checkpoint(stage2_dir)
        return (None, found) if found else (resolve_resume(resume, stage1_dir), None)
    path = resolve_resume(resume, stage1_dir)
    return (None, path) if Path(path).resolve().parent == Path(stage2_dir).resolve() else (path, None)


def _train(model, stage_args, train_data, collator, processor, resume) -> float:
    trainer = Blip2StageTrainer(model=model, args=stage_args, train_dataset=train_data, data_collator=collator,
                                processing_class=processor)
    trainer.train(resume_from_checkpoint=resume)
    return trainer.state.log_history[-1].get("train_runtime") or 0.0


def pretrain_blip2(args, recipe_args, training_args) -> int:
    pformer = encoder_tokenizer = None
    tokenizer = None
    if recipe_args.pformer:
        pformer, encoder_tokenizer, tokenizer = load_pformer(recipe_args.pformer)
    processor = get_processor(args.config if args.config in list_presets() else "blip2-tiny", tokenizer=tokenizer)
    config = build_config(args, processor.tokenizer, pformer)
    processor.num_query_tokens = config.num_query_tokens
    freeze_vision = bool(recipe_args.freeze_vision_tower)
    freeze_lm = bool(recipe_args.freeze_language_model)

    if "," in args.dataset:
        raise ValueError("--model_type blip2 trains on image-caption pairs only: give one --dataset.")
    train_data, eval_splits, datasets = load_training_data(args, training_args)
    if "image" not in train_data.column_names:
        raise ValueError(f"--model_type blip2 needs image-caption pairs; {args.dataset} has {train_data.column_names}.")
    collator = Blip2PairCollator(processor, args.max_length, encoder_tokenizer)
    total = training_args.max_steps
    if total <= 0:
        raise ValueError("--model_type blip2 needs --max_steps (split between the two stages).")
    stage1_steps = recipe_args.stage1_steps if recipe_args.stage1_steps is not None else total // 2
    if not 0 < stage1_steps < total:
        raise ValueError(f"--stage1_steps {stage1_steps} must lie strictly between 0 and --max_steps {total}.")
    args1 = stage_arguments(training_args, 1, stage1_steps, total)
    args2 = stage_arguments(training_args, 2, total - stage1_steps, total)

    stage1 = build_stage1(config, pformer, freeze_vision)
    trainable, count, fraction = trainable_parameters(stage1)
    logger.info("BLIP-2 stage 1: trainable %d / %d parameters (%.1f%%)", trainable, count, 100 * fraction)
    resume1, resume2 = resume_points(training_args.resume_from_checkpoint, args1.output_dir, args2.output_dir)
    runtime = 0.0
    if resume2 is None:
        runtime += _train(stage1, args1, train_data, collator, processor, resume1)
        if args1.should_save:
            stage1.save_pretrained(Path(args1.output_dir) / "final")
            processor.save_pretrained(Path(args1.output_dir) / "final")

    stage2 = stage1.to_stage2(stage2_language_model(config, pformer), config.image_token_index,
                              freeze_vision_model=freeze_vision, freeze_language_model=freeze_lm)
    trainable, count, fraction = trainable_parameters(stage2)
    logger.info("BLIP-2 stage 2: trainable %d / %d parameters (%.1f%%)", trainable, count, 100 * fraction)
    runtime += _train(stage2, args2, train_data, collator, processor, resume2)

    if args2.should_save and args.final_evaluation:
        blip2 = stage2.blip2.eval()
        results = {"train_runtime_s": runtime, "stage1_steps": stage1_steps, "stage2_steps": total - stage1_steps,
                   "pformer": recipe_args.pformer, "skipped_tasks": SKIPPED_TASKS}
        split_results = {name: evaluate_split(blip2, processor, split, args.max_eval_samples)
                         for name, split in eval_splits.items()}
        merge_split_results(results, split_results)
        write_results(results, training_args.output_dir)
        final_dir = Path(args.final_dir or Path(training_args.output_dir) / "final")
        stage2.save_pretrained(final_dir)
        processor.save_pretrained(final_dir)
        hyper = hyperparameters(training_args, stage1_steps=stage1_steps, pformer=recipe_args.pformer or "")
        card = build_model_card(blip2, args.repo_id, eval_results=results, dataset_name=args.dataset,
                                datasets=datasets, hyperparameters=hyper)
        card.save(final_dir / "README.md")
        write_results(results, final_dir)
        print_summary(results, final_dir)
    return 0


__all__ = ["Blip2PairCollator", "Blip2StageTrainer", "pretrain_blip2"]
