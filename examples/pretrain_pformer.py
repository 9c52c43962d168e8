"""Stage 0 of P-Former: train the prompt predictor on sentences alone (frozen LM), then save a Hub-ready folder.

    python examples/pretrain_pformer.py                                   # pformer-tiny on generated captions
    python examples/pretrain_pformer.py --dataset captions.csv --text_column caption
    accelerate launch examples/pretrain_pformer.py --encoder_model bert-base-uncased --text_model facebook/opt-2.7b

`--dataset` is a local text file (one sentence a line), csv, json/jsonl or parquet file. With `--encoder_model` /
`--text_model` the backbones are loaded from paths or Hub ids and their own tokenizers are used (the encoder's for
the encoder input, the LM's for the reconstruction target). Every TrainingArguments option is accepted.
"""

import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset, load_dataset
from transformers import AutoTokenizer, HfArgumentParser, set_seed

import cosmo_vl
from cosmo_vl.modeling import PFormerModel
from cosmo_vl.presets import get_config
from cosmo_vl.processing import load_default_tokenizer
from cosmo_vl.trainers import VLTrainer, VLTrainingArguments, register_loss_component

logger = logging.getLogger("pretrain_pformer")


@dataclass
class ScriptArguments:
    config: str = field(default="pformer-tiny", metadata={"help": "Preset name or a PFormerConfig folder."})
    encoder_model: str | None = field(default=None, metadata={"help": "Pretrained text encoder (path or Hub id)."})
    text_model: str | None = field(default=None, metadata={"help": "Pretrained causal LM, kept frozen (path or Hub id)."})
    dataset: str | None = field(default=None, metadata={"help": "Text / csv / json / parquet file (default: generated captions)."})
    text_column: str = field(default="text", metadata={"help": "Sentence column of --dataset."})
    num_generated: int = field(default=20000, metadata={"help": "Sentences generated when no --dataset is given."})
    max_length: int = field(default=48, metadata={"help": "Longest token sequence; longer sentences are truncated."})
    final_dir: str | None = field(default=None, metadata={"help": "Hub-ready folder (default: OUTPUT_DIR/final)."})


# The no-argument run: pformer-tiny from scratch on generated captions, a couple of minutes on 2 CPU cores.
DEFAULTS = dict(
    output_dir="outputs/pformer-tiny",
    max_steps=150,
    per_device_train_batch_size=32,
    learning_rate=1e-3,
    warmup_steps=30,
    lr_scheduler_type="cosine",
    weight_decay=0.01,
    logging_steps=25,
    save_strategy="no",
    report_to="none",
    dataloader_drop_last=True,
    remove_unused_columns=False,
)


def generated_captions(n: int, seed: int = 0) -> list[str]:
    """Default corpus: captions from the grammar of the embedded shapes corpus (no images drawn)."""
    from cosmo_vl.processing.scenes import random_scene

    rng = random.Random(seed)
    return [random_scene(rng).caption for _ in range(n)]


def load_sentences(args: ScriptArguments) -> Dataset:
    if args.dataset is None:
        return Dataset.from_dict({"text": generated_captions(args.num_generated)})
    path = Path(args.dataset)
    suffix = path.suffix.lower()
    if suffix in (".txt", ""):
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return Dataset.from_dict({"text": lines})
    builder = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(suffix)
    if builder is None:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (txt, csv, json, jsonl, parquet).")
    data = load_dataset(builder, data_files=str(path), split="train")
    if args.text_column not in data.column_names:
        raise ValueError(f"column {args.text_column!r} not in {data.column_names}; pass --text_column.")
    return data.select_columns([args.text_column]).rename_column(args.text_column, "text")


class SentenceCollator:
    """Tokenises sentences for the encoder and (if different) for the LM; `labels` are the LM ids without padding
    and without the leading BOS, so the Trainer counts exactly the tokens the LM loss averages over."""

    def __init__(self, encoder_tokenizer, lm_tokenizer, max_length: int):
        self.encoder_tokenizer, self.lm_tokenizer, self.max_length = encoder_tokenizer, lm_tokenizer, max_length

    def _tokenize(self, tokenizer, texts):
        return tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")

    def __call__(self, rows: list[dict]) -> dict:
        texts = [row["text"] for row in rows]
        enc = self._tokenize(self.encoder_tokenizer, texts)
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        lm = enc
        if self.lm_tokenizer is not self.encoder_tokenizer:
            lm = self._tokenize(self.lm_tokenizer, texts)
            batch["lm_input_ids"], batch["lm_attention_mask"] = lm["input_ids"], lm["attention_mask"]
        labels = lm["input_ids"].masked_fill(~lm["attention_mask"].bool(), -100)
        bos = self.lm_tokenizer.bos_token_id
        if bos is not None:
            labels[:, 0] = torch.where(labels[:, 0] == bos, -100, labels[:, 0])
        batch["labels"] = labels
        return batch


def main() -> None:
    parser = HfArgumentParser((ScriptArguments, VLTrainingArguments))
    parser.set_defaults(**DEFAULTS)
    args, training_args = parser.parse_args_into_dataclasses(args=sys.argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    set_seed(training_args.seed)

    if args.encoder_model or args.text_model:
        if not (args.encoder_model and args.text_model):
            raise ValueError("--encoder_model and --text_model go together.")
        model = PFormerModel.from_backbones(args.encoder_model, args.text_model)
        encoder_tokenizer = AutoTokenizer.from_pretrained(args.encoder_model)
        lm_tokenizer = AutoTokenizer.from_pretrained(args.text_model)
    else:
        config = get_config(args.config) if args.config == "pformer-tiny" else cosmo_vl.modeling.PFormerConfig.from_pretrained(args.config)
        model = PFormerModel(config)
        encoder_tokenizer = lm_tokenizer = load_default_tokenizer()

    # The third component is new to the trainer; all three are means over the (micro-)batch or its tokens.
    register_loss_component("word_embedding_loss", "batch")
    if training_args.loss_weights is None:
        training_args.loss_weights = {
            "lm_loss": model.config.lm_loss_weight,
            "contrastive_loss": model.config.contrastive_loss_weight,
            "word_embedding_loss": model.config.word_embedding_loss_weight,
        }
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("P-Former: %d trainable / %d parameters", trainable, sum(p.numel() for p in model.parameters()))

    trainer = VLTrainer(
        model=model,
        args=training_args,
        train_dataset=load_sentences(args),
        data_collator=SentenceCollator(encoder_tokenizer, lm_tokenizer, args.max_length),
    )
    trainer.train()

    final_dir = args.final_dir or str(Path(training_args.output_dir) / "final")
    if trainer.is_world_process_zero():
        cosmo_vl.enable_remote_code(model)  # loadable with trust_remote_code=True where cosmo-vl is not installed
        model.save_pretrained(final_dir)
        encoder_tokenizer.save_pretrained(final_dir)
        if lm_tokenizer is not encoder_tokenizer:
            lm_tokenizer.save_pretrained(str(Path(final_dir) / "lm_tokenizer"))
        logger.info("Saved the P-Former to %s", final_dir)


if __name__ == "__main__":
    main()
