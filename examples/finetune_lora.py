"""Fine-tune a CosMo model with LoRA adapters on its language model, and save the adapter (plus, optionally, a
merged full model).

    python examples/finetune_lora.py                                  # cosmo-tiny preset, embedded data, ~2 min CPU
    python examples/finetune_lora.py --model outputs/cosmo-tiny/final --max_steps 500
    python examples/finetune_lora.py --model DIR --qlora              # LM in 4-bit (needs a bitsandbytes backend)
    python examples/finetune_lora.py --merge                          # also write OUTPUT_DIR/merged

LoRA targets are chosen by a regular expression over full module names (`--lora_target_regex`), so only the
language model's own projections are adapted: the vision tower, the Perceiver resampler, the gated
cross-attention blocks and the contrastive heads stay frozen. Every TrainingArguments option is accepted.

Outputs: OUTPUT_DIR/adapter (adapter weights, adapter_config.json, README.md card, processor), OUTPUT_DIR/base
(the base model when it was built from a preset, so the adapter has something to load onto) and, with
`--merge`, OUTPUT_DIR/merged (a full CosMo folder with the LoRA deltas folded in).
"""

import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, set_seed

from cosmo_vl.modeling import CosmoForConditionalGeneration, trainable_parameters
from cosmo_vl.presets import get_config, get_processor, list_presets
from cosmo_vl.processing import VLCollator, load_any
from cosmo_vl.trainers import CosmoTrainer, CosmoTrainingArguments

logger = logging.getLogger("finetune_lora")

# Only the decoder layers' own attention projections: `...layers.N.layer.self_attn.q_proj` etc. The cross-attention
# blocks live at `...layers.N.cross_attention` (no `.layer.` segment), so they never match.
DEFAULT_TARGET_REGEX = r"model\.language_model\..*\.layer\.self_attn\.(q_proj|v_proj)"
# Modules never quantised by --qlora: everything outside the LM's decoder layers, plus the LM head.
# transformers matches these from the start of the full module name (also as regexes) or as a suffix.
QLORA_SKIP_MODULES = ["model.vision_model", "model.resampler", r"model\.language_model\..*\.cross_attention",
                      "cross_attention", "lm_head", "model.text_pooler", "model.text_projection",
                      "model.image_projection", "model.logit_scale"]


@dataclass
class LoraScriptArguments:
    model: str | None = field(default=None, metadata={"help": "Saved CosMo folder (default: the --preset, random)."})
    preset: str = field(default="cosmo-tiny", metadata={"help": f"Preset used without --model ({', '.join(list_presets())})."})
    dataset: str = field(default="shapes-captions", metadata={"help": "Embedded dataset name or a local path."})
    image_column: str = field(default="image", metadata={"help": "Image column of --dataset."})
    text_column: str = field(default="text", metadata={"help": "Caption column of --dataset."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training samples."})
    max_length: int = field(default=64, metadata={"help": "Longest token sequence; longer samples are truncated."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scaling = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_regex: str = field(
        default=DEFAULT_TARGET_REGEX,
        metadata={"help": "Regex matched (fullmatch) against module names; must stay inside model.language_model."},
    )
    qlora: bool = field(default=False, metadata={"help": "Load the LM's linear layers in 4-bit NF4 (bitsandbytes)."})
    merge: bool = field(default=False, metadata={"help": "Also write OUTPUT_DIR/merged, the LoRA-merged full model."})
    base_model_id: str | None = field(
        default=None, metadata={"help": "base_model written in the adapter card (default: --model or OUTPUT_DIR/base)."}
    )
    repo_id: str = field(default="cosmo-vl/cosmo-tiny-lora", metadata={"help": "Adapter repository id in the card."})


DEFAULTS = dict(
    output_dir="outputs/cosmo-tiny-lora",
    max_steps=150,
    per_device_train_batch_size=16,
    learning_rate=2e-3,
    warmup_steps=10,
    lr_scheduler_type="cosine",
    weight_decay=0.0,
    max_grad_norm=1.0,
    logging_steps=10,
    save_strategy="no",
    report_to=[],
    dataloader_num_workers=0,
    seed=0,
    remove_unused_columns=False,
    gradient_checkpointing=True,
    gradient_checkpointing_kwargs={"use_reentrant": False},
)


# --------------------------------------------------------------------------------------------------- model
def check_lora_targets(model: torch.nn.Module, regex: str) -> list[str]:
    """Module names the regex selects; raise if any falls outside the LM or inside a cross-attention block."""
    pattern = re.compile(regex)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and pattern.fullmatch(n)]
    names = names or [n for n, _ in model.named_modules() if pattern.fullmatch(n)]
    if not names:
        raise ValueError(f"--lora_target_regex {regex!r} matches no module.")
    bad = [n for n in names if ".language_model." not in f".{n}" or ".cross_attention." in n]
    if bad:
        raise ValueError(f"--lora_target_regex must select LM projections only; it also matches {bad[:4]}.")
    return names


def _bnb_4bit_config():
    """A BitsAndBytesConfig for the LM, or a clear error when bitsandbytes cannot run here."""
    try:
        import bitsandbytes as bnb  # noqa: F401
    except Exception as err:  # ImportError, or a broken native library
        raise RuntimeError(
            f"--qlora needs bitsandbytes (pip install bitsandbytes); importing it failed: {err!r}."
        ) from err
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if not torch.cuda.is_available() or torch.cuda.is_bf16_supported()
        else torch.float16,
        llm_int8_skip_modules=QLORA_SKIP_MODULES,
    )


def load_base(args: LoraScriptArguments, output_dir: str):
    """(model, processor, base_path): the saved folder, or the preset written to OUTPUT_DIR/base first."""
    if args.model:
        from transformers import AutoProcessor

        base_path = args.model
        try:
            processor = AutoProcessor.from_pretrained(base_path)
        except Exception:  # a folder saved without its processor
            logger.warning("No processor in %s; using the %s preset's.", base_path, args.preset)
            processor = get_processor(args.preset)
    else:
        base_path = str(Path(output_dir) / "base")
        model = CosmoForConditionalGeneration(get_config(args.preset))
        processor = get_processor(args.preset)
        model.save_pretrained(base_path)
        processor.save_pretrained(base_path)
        if not args.qlora:
            model.config._name_or_path = base_path
            return model, processor, base_path
    kwargs = {}
    if args.qlora:
        kwargs["quantization_config"] = _bnb_4bit_config()
        kwargs["device_map"] = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    try:
        model = CosmoForConditionalGeneration.from_pretrained(base_path, **kwargs)
    except Exception as err:
        if args.qlora:
            raise RuntimeError(
                f"--qlora: bitsandbytes could not load the LM in 4-bit on this backend "
                f"({'cuda' if torch.cuda.is_available() else 'cpu'}): {err!r}. Run without --qlora, or on a GPU."
            ) from err
        raise
    return model, processor, base_path


def enable_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing of the decoder layers (newer transformers renamed the method)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def add_lora(model, args: LoraScriptArguments, gradient_checkpointing: bool = True):
    """Freeze everything, then wrap the regex-selected LM projections with LoRA adapters (a `PeftModel`)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    check_lora_targets(model, args.lora_target_regex)
    # Frozen towers: the vision tower then runs under no_grad, and checkpointing only recomputes LM layers.
    model.config.freeze_vision_tower = True
    model.config.freeze_language_model = True
    model.requires_grad_(False)
    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        enable_checkpointing(model)
    config = LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        target_modules=args.lora_target_regex, bias="none",
    )
    return get_peft_model(model, config)


# ---------------------------------------------------------------------------------------------------- save
def adapter_card(peft_model, args: LoraScriptArguments, base_model_id: str, training_args, results: dict):
    from huggingface_hub import ModelCard, ModelCardData

    trainable, total, fraction = trainable_parameters(peft_model)
    data = ModelCardData(
        library_name="peft",
        base_model=base_model_id,
        pipeline_tag="image-text-to-text",
        tags=["cosmo", "lora", "vision-language"] + (["qlora", "4-bit"] if args.qlora else []),
        datasets=[args.dataset],
    )
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {args.repo_id}", "",
        f"LoRA adapter for the language model of the CosMo model `{base_model_id}`, trained on `{args.dataset}`.",
        "The vision tower, Perceiver resampler and gated cross-attention blocks are unchanged.", "",
        "## Usage", "", "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForImageTextToText, AutoProcessor", "",
        f'base = AutoModelForImageTextToText.from_pretrained("{base_model_id}", trust_remote_code=True)',
        f'model = PeftModel.from_pretrained(base, "{args.repo_id}")',
        "model = model.merge_and_unload()  # optional: fold the adapter into the weights",
        "```", "",
        "## Adapter", "",
        f"- rank {args.lora_r}, alpha {args.lora_alpha}, dropout {args.lora_dropout}",
        f"- target modules (regex): `{args.lora_target_regex}`",
        f"- trainable parameters: {trainable:,} of {total:,} ({100 * fraction:.2f}%)",
        f"- base weights: {'4-bit NF4 (QLoRA)' if args.qlora else 'full precision'}", "",
        "## Training", "",
        f"- steps {training_args.max_steps}, batch {training_args.per_device_train_batch_size}, "
        f"learning rate {training_args.learning_rate}, scheduler {training_args.lr_scheduler_type}, "
        f"gradient checkpointing {training_args.gradient_checkpointing}, seed {training_args.seed}",
    ]
    if results:
        lines += ["", "## Results", ""] + [f"- {k}: {v}" for k, v in results.items()]
    return ModelCard("\n".join(lines) + "\n")


def save_adapter(peft_model, processor, args, training_args, base_path: str, results: dict) -> Path:
    adapter_dir = Path(training_args.output_dir) / "adapter"
    base_model_id = args.base_model_id or base_path
    peft_model.peft_config["default"].base_model_name_or_path = base_model_id
    peft_model.save_pretrained(adapter_dir)  # adapter weights + adapter_config.json only
    processor.save_pretrained(adapter_dir)
    adapter_card(peft_model, args, base_model_id, training_args, results).save(adapter_dir / "README.md")
    return adapter_dir


def save_merged(peft_model, processor, training_args) -> Path:
    import cosmo_vl

    merged_dir = Path(training_args.output_dir) / "merged"
    merged = peft_model.merge_and_unload()
    if getattr(merged, "is_loaded_in_4bit", False):
        logger.warning("Merging into 4-bit weights re-quantises them; the merged model is approximate.")
    cosmo_vl.enable_remote_code(merged, processor)
    merged.save_pretrained(merged_dir)
    processor.save_pretrained(merged_dir)
    return merged_dir


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None):
    parser = HfArgumentParser((LoraScriptArguments, CosmoTrainingArguments))
    parser.set_defaults(**DEFAULTS)
    args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO if training_args.process_index == 0 else logging.WARNING)
    set_seed(training_args.seed)

    model, processor, base_path = load_base(args, training_args.output_dir)
    model = add_lora(model, args, gradient_checkpointing=training_args.gradient_checkpointing)
    trainable, total, fraction = trainable_parameters(model)
    logger.info("LoRA on %s: trainable %d / %d parameters (%.2f%%)", base_path, trainable, total, 100 * fraction)
    # The PeftModel is already set up for checkpointing; the Trainer must not wrap it again.
    gradient_checkpointing = training_args.gradient_checkpointing
    training_args.gradient_checkpointing = False

    data = load_any(args.dataset, image_column=args.image_column, text_column=args.text_column)
    train_data = data["train"]
    if args.max_train_samples:
        train_data = train_data.select(range(min(args.max_train_samples, len(train_data))))
    collator = VLCollator(processor, max_length=args.max_length, truncation=True, on_error="skip")
    trainer = CosmoTrainer(
        model=model, args=training_args, train_dataset=train_data, data_collator=collator, processing_class=processor,
    )
    train_out = trainer.train()
    training_args.gradient_checkpointing = gradient_checkpointing

    results = {"train_loss": round(train_out.training_loss, 4),
               "train_runtime_s": round(train_out.metrics.get("train_runtime", 0.0), 1)}
    if trainer.is_world_process_zero():
        adapter_dir = save_adapter(model, processor, args, training_args, base_path, results)
        print(f"Adapter: {adapter_dir}")
        if args.merge:
            print(f"Merged model: {save_merged(model, processor, training_args)}")
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
