"""Ablation of the shared VLP objectives on CosMo: ITC only, then + ITM, + momentum distillation, + GRIT sampler.

    python bench/objectives.py --output out/objectives.json                 # cosmo-tiny, 300 steps per setting
    python bench/objectives.py --output out/objectives.json --steps 600 --train_samples 4000
    python bench/objectives.py --output out/objectives_quick.json --quick   # a smoke run (seconds)
    python bench/objectives.py --output out/objectives.json --merge out/seed0.json out/seed1.json   # combine seeds

Every setting trains a fresh `cosmo-tiny` (same seed, same initial weights) with `CosmoTrainer` for the same number
of steps on the embedded `shapes-captions` pairs; the settings are cumulative and are switched on through the
trainer options of `CosmoTrainingArguments`:

  itc                    LM loss + CosMo's in-batch image-text contrastive loss (the default recipe)
  itc+itm                + image-text matching with in-batch hard negatives (`itm_loss_weight`)
  itc+itm+mod            + ALBEF momentum distillation against the momentum batch + queue (`momentum_distillation`)
  itc+itm+mod+grit       + GRIT-VLP grouped hard-negative batches (`grit_sampler`; acts from the second epoch on,
                           so `--train_samples` is kept small enough for several epochs)

Reported per setting: image->text and text->image retrieval R@1/R@5 over the distinct captions of the held-out
`test` split (colour x shape pairs never seen in training) and of `test_iid` (new scenes of seen pairs), with
`cosmo_vl.evaluation.retrieval`; seconds per optimizer step (forward + backward + AdamW step), both the mean during
training (trainer step callbacks, first steps excluded) and, for the ratios, the median of interleaved timing rounds
on one fixed batch after training (robust to load drift on a shared machine); the losses of the last logging
window; and ratios against `itc`.
With momentum distillation `contrastive_loss` is ALBEF's term (soft targets, queue columns), not the plain one.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmo_vl import evaluation  # noqa: E402
from cosmo_vl.modeling import CosmoForConditionalGeneration  # noqa: E402
from cosmo_vl.presets import get_config, get_processor  # noqa: E402
from cosmo_vl.processing import VLCollator, load_embedded_dataset  # noqa: E402
from cosmo_vl.trainers import CosmoTrainer, CosmoTrainingArguments  # noqa: E402

SETTINGS = ("itc", "itc+itm", "itc+itm+mod", "itc+itm+mod+grit")
SPLITS = ("test", "test_iid")
RETRIEVAL_KEYS = ("i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5")
LOSS_KEYS = ("loss", "lm_loss", "contrastive_loss", "itm_loss")


def source_state() -> dict:
    """The git commit the run used and the tracked files modified on top of it (results depend on both)."""
    root = Path(__file__).resolve().parents[1]

    def git(*cmd):
        return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, timeout=30).stdout

    try:
        return {"git_commit": git("rev-parse", "--short", "HEAD").strip(),
                "modified_files": [line[3:] for line in
                                   git("status", "--porcelain", "--untracked-files=no").splitlines()]}
    except (OSError, subprocess.SubprocessError):
        return {}


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (from its first micro-batch to the end of the optimizer step)."""

    def __init__(self):
        self.times: list[float] = []
        self._start = None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.times.append(time.perf_counter() - self._start)
            self._start = None


def setting_options(name: str, args) -> dict:
    """The `CosmoTrainingArguments` options of one (cumulative) setting."""
    parts = name.split("+")
    options: dict = {}
    if "itm" in parts:
        options.update(itm_loss_weight=args.itm_weight, itm_negatives=args.itm_negatives)
    if "mod" in parts:
        options.update(momentum_distillation=True, momentum=args.momentum, momentum_queue_size=args.queue_size,
                       distillation_alpha=args.alpha)
    if "grit" in parts:
        options.update(grit_sampler=True)
    return options


def load_data(args):
    if args.quick:
        data = load_embedded_dataset("shapes-captions", num_train=args.train_samples, num_test=args.eval_samples)
    else:
        data = load_embedded_dataset("shapes-captions")
    train = data["train"].select(range(min(args.train_samples, len(data["train"]))))
    evals = {s: data[s].select(range(min(args.eval_samples, len(data[s])))) for s in SPLITS}
    return train, evals


def retrieval_scores(model, processor, split) -> dict:
    """Image <-> text retrieval over the split's distinct captions (an image's positive is its own caption)."""
    captions = split["text"]
    unique = sorted(set(captions))
    index = {c: j for j, c in enumerate(unique)}
    scores = evaluation.retrieval(model, processor, split["image"], unique,
                                  image_to_text=[index[c] for c in captions], progress=False)
    return {"num_images": len(captions), "num_texts": len(unique), **{k: round(v, 4) for k, v in scores.items()}}


def run_setting(name: str, args, train, evals, processor, workdir: str, seed: int) -> dict:
    set_seed(seed)
    model = CosmoForConditionalGeneration(get_config("cosmo-tiny"))
    options = setting_options(name, args)
    training_args = CosmoTrainingArguments(
        output_dir=os.path.join(workdir, f"{name.replace('+', '_')}_{seed}"), max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_steps=max(1, args.steps // 10), lr_scheduler_type="cosine", weight_decay=0.01, max_grad_norm=1.0,
        logging_steps=max(1, args.steps // 20), save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        seed=seed, dataloader_drop_last=True, dataloader_num_workers=0, **options,
    )
    timer = StepTimer()
    trainer = CosmoTrainer(model=model, args=training_args, train_dataset=train, processing_class=processor,
                           data_collator=VLCollator(processor, max_length=args.max_length, truncation=True),
                           callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # disable_tqdm would print every log line
    start = time.perf_counter()
    trainer.train()
    train_wall = time.perf_counter() - start
    logs = [e for e in trainer.state.log_history if "loss" in e and "train_runtime" not in e]
    last = logs[-1] if logs else {}
    skip = min(args.skip_steps, max(0, len(timer.times) - 1))
    timed = timer.times[skip:]
    model.eval()
    start = time.perf_counter()
    retrieval = {split: retrieval_scores(model, processor, data) for split, data in evals.items()}
    extra = {}
    if trainer._grit_sampler is not None:
        extra["same_caption_pairs_per_batch"] = same_caption_pairs(train["text"], trainer._grit_sampler._order,
                                                                   args.batch_size, seed)
    return {**extra,
        "options": options,
        "retrieval": retrieval,
        "step_time_s": round(statistics.fmean(timed), 5) if timed else None,
        "step_time_median_s": round(statistics.median(timed), 5) if timed else None,
        "timed_steps": len(timed),
        "train_wall_s": round(train_wall, 2),
        "eval_wall_s": round(time.perf_counter() - start, 2),
        "epochs": round(float(trainer.state.epoch or 0), 2),
        "final_losses": {k: round(float(last[k]), 4) for k in LOSS_KEYS if k in last},
        "final_losses_step": last.get("step"),
        "loss_curve": [{k: round(float(e[k]), 4) for k in ("step", *LOSS_KEYS) if k in e} for e in logs],
    }


def same_caption_pairs(texts: list[str], order: list[int], batch_size: int, seed: int) -> dict:
    """In-batch pairs holding the same caption (false negatives of the in-batch contrastive loss), per batch, in
    the GRIT sampler's last epoch and in a random order of the same pairs."""

    def per_batch(indices):
        batches = [indices[i : i + batch_size] for i in range(0, len(indices) - batch_size + 1, batch_size)]
        pairs = 0
        for batch in batches:
            captions = [texts[i] for i in batch]
            pairs += sum(captions.count(c) - 1 for c in captions) // 2
        return round(pairs / max(1, len(batches)), 3)

    random_order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    return {"grit_last_epoch": per_batch(order), "random": per_batch(random_order)}


def interleaved_step_times(args, train, processor, workdir: str) -> dict:
    """Seconds per optimizer step (forward + backward + AdamW step) of every setting on one fixed batch, timed in
    interleaved rounds so that load drift on a shared machine hits every setting alike; the median over rounds.
    GRIT's once-per-epoch ordering is not in these steps (it is in the training wall time)."""
    collator = VLCollator(processor, max_length=args.max_length, truncation=True)
    batch = collator([train[i] for i in range(args.batch_size)])
    trainers = {}
    for name in args.settings:
        set_seed(args.seeds[0])
        training_args = CosmoTrainingArguments(
            output_dir=os.path.join(workdir, "timing"), per_device_train_batch_size=args.batch_size, report_to=[],
            use_cpu=True, disable_tqdm=True, save_strategy="no", learning_rate=args.learning_rate,
            **setting_options(name, args))
        trainer = CosmoTrainer(model=CosmoForConditionalGeneration(get_config("cosmo-tiny")), args=training_args,
                               data_collator=collator)
        trainer.create_optimizer()
        trainer.state.max_steps, trainer.state.num_train_epochs = args.steps, 1
        trainers[name] = trainer

    def step(trainer):
        trainer.training_step(trainer.model, dict(batch))
        trainer.optimizer.step()
        trainer.model.zero_grad(set_to_none=True)
        trainer.state.global_step += 1

    for trainer in trainers.values():  # warm-up (and the first EMA / queue fill)
        for _ in range(2):
            step(trainer)
    rounds: dict = {name: [] for name in trainers}
    for _ in range(args.timing_rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            for _ in range(args.timing_steps):
                step(trainer)
            rounds[name].append(round((time.perf_counter() - start) / args.timing_steps, 5))
    return {name: {"median_s": round(statistics.median(r), 5), "rounds": r} for name, r in rounds.items()}


def aggregate(runs: dict) -> dict:
    """One setting over seeds: means of the retrieval scores, step times and final losses, standard deviations of
    the retrieval scores, and every seed's own entry."""
    first = next(iter(runs.values()))
    if len(runs) == 1:
        return {**first, "seeds": list(runs)}

    def mean(values):
        return round(statistics.fmean(values), 5)

    entry = {"options": first["options"], "seeds": list(runs), "retrieval": {}, "retrieval_std": {}}
    for split in SPLITS:
        keys = [k for k, v in first["retrieval"][split].items() if isinstance(v, (int, float))]
        entry["retrieval"][split] = {k: mean([r["retrieval"][split][k] for r in runs.values()]) for k in keys}
        entry["retrieval_std"][split] = {
            k: round(statistics.stdev([r["retrieval"][split][k] for r in runs.values()]), 5) for k in RETRIEVAL_KEYS}
    for key in ("step_time_s", "step_time_median_s", "train_wall_s", "eval_wall_s"):
        entry[key] = mean([r[key] for r in runs.values()])
    entry["final_losses"] = {k: mean([r["final_losses"][k] for r in runs.values()]) for k in first["final_losses"]}
    entry["per_seed"] = {str(seed): r for seed, r in runs.items()}
    return entry


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b not in (None, 0) else None


def add_ratios(results: dict) -> None:
    base = results["settings"].get("itc")
    if base is None:
        return
    for name, entry in results["settings"].items():
        timed = entry.get("step_time_interleaved_s"), base.get("step_time_interleaved_s")
        ratios = {"step_time": _ratio(*timed) if all(timed) else _ratio(entry["step_time_s"], base["step_time_s"]),
                  "step_time_during_training": _ratio(entry["step_time_s"], base["step_time_s"])}
        for split in SPLITS:
            for key in RETRIEVAL_KEYS:
                ratios[f"{split}/{key}"] = _ratio(entry["retrieval"][split][key], base["retrieval"][split][key])
        entry["ratios_vs_itc"] = ratios


def markdown(results: dict) -> str:
    s = results["config"]
    seeds = ", ".join(str(x) for x in s["seeds"])
    lines = [
        f"cosmo-tiny, {results['steps']} steps x batch {s['batch_size']} on {s['train_samples']} training pairs, "
        f"seed(s) {seeds} (mean; R@1 +- std over seeds when several), {s['threads']} thread(s); retrieval over the "
        f"distinct captions of {s['eval_samples']} held-out images.",
        "",
        "| setting | test i2t R@1 / R@5 | test t2i R@1 / R@5 | test_iid i2t R@1 / R@5 | test_iid t2i R@1 / R@5 "
        "| s/step | step x itc | lm_loss | contrastive_loss | itm_loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in results["settings"].items():
        r, std = e["retrieval"], e.get("retrieval_std")
        cells = [name]
        for split in SPLITS:
            for side in ("i2t", "t2i"):
                spread = f"+-{std[split][side + '_r1']:.3f}" if std else ""
                cells.append(f"{r[split][side + '_r1']:.3f}{spread} / {r[split][side + '_r5']:.3f}")
        losses = e["final_losses"]
        step = e.get("ratios_vs_itc", {}).get("step_time")
        step_s = e.get("step_time_interleaved_s") or e["step_time_s"]
        cells += [f"{step_s:.3f}" if step_s else "n/a", f"{step:.2f}" if step else "n/a"]
        cells += [f"{losses[k]:.3f}" if k in losses else "-" for k in ("lm_loss", "contrastive_loss", "itm_loss")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    processor = get_processor("cosmo-tiny")
    train, evals = load_data(args)
    results: dict = {
        "benchmark": "objectives",
        "steps": args.steps,
        "config": {k: v for k, v in vars(args).items() if k != "output"} | {
            "model": "cosmo-tiny", "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), **source_state(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "note": "Cumulative settings; for each seed every setting starts from the same weights and first-epoch order. "
                "With momentum distillation contrastive_loss is ALBEF's term (soft targets over batch + queue), so "
                "compare it within a setting, not across. CPU step times are noisy: read ratios within ~10% of 1.0 "
                "as no difference.",
        "settings": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_objectives_") as workdir:
        for name in args.settings:
            runs = {}
            for seed in args.seeds:
                runs[seed] = entry = run_setting(name, args, train, evals, processor, workdir, seed)
                print(f"{name:18s} seed {seed}: test i2t R@1 {entry['retrieval']['test']['i2t_r1']:.3f} "
                      f"t2i R@1 {entry['retrieval']['test']['t2i_r1']:.3f}  {entry['step_time_s']} s/step", flush=True)
            results["settings"][name] = aggregate(runs)
        if args.timing_rounds > 0:
            for name, timing in interleaved_step_times(args, train, processor, workdir).items():
                results["settings"][name]["step_time_interleaved_s"] = timing["median_s"]
                results["settings"][name]["step_time_interleaved_rounds"] = timing["rounds"]
    results["config"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    add_ratios(results)
    results["markdown"] = markdown(results)
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="JSON file to write.")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="Only combine earlier outputs (runs with different --seeds) into --output.")
    parser.add_argument("--steps", type=int, default=None, help="Optimizer steps per setting (default 300; 4 quick).")
    parser.add_argument("--quick", action="store_true", help="Tiny data and batches: a smoke run in seconds.")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--batch_size", type=int, default=None, help="Default 32 (8 with --quick).")
    parser.add_argument("--train_samples", type=int, default=None,
                        help="Training pairs (default 2000: several epochs, so the GRIT sampler acts; 32 quick).")
    parser.add_argument("--eval_samples", type=int, default=None, help="Held-out images per split (500; 16 quick).")
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--itm_weight", type=float, default=1.0)
    parser.add_argument("--itm_negatives", default="sample", choices=["sample", "hardest"])
    parser.add_argument("--momentum", type=float, default=0.995, help="EMA momentum (ALBEF 0.995).")
    parser.add_argument("--queue_size", type=int, default=256, help="Momentum queue (below the training set size).")
    parser.add_argument("--alpha", type=float, default=0.4,
                        help="Distillation alpha (ALBEF 0.4), ramped up over the first epoch.")
    parser.add_argument("--skip_steps", type=int, default=5, help="First steps left out of the step time.")
    parser.add_argument("--timing_rounds", type=int, default=None,
                        help="Interleaved timing rounds after training (default 5; 1 quick; 0 = off).")
    parser.add_argument("--timing_steps", type=int, default=None, help="Steps per timing round (default 4; 1 quick).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="Seeds; each setting trains once per seed (same seed = same initial weights and order).")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"steps": 4 if quick else 300, "batch_size": 8 if quick else 32, "timing_rounds": 1 if quick else 5,
                "timing_steps": 1 if quick else 4,
                "train_samples": 32 if quick else 2000, "eval_samples": 16 if quick else 500}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if quick:
        args.queue_size = min(args.queue_size, args.batch_size * 2)
        args.skip_steps = min(args.skip_steps, 1)
    return args


def merge(paths: list[str]) -> dict:
    """Combine the JSON of runs with different seeds (e.g. one run per seed, each within a time budget) into one
    result: per-seed entries kept, retrieval / losses averaged as `--seeds` would, interleaved step times averaged
    over the runs."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    results = {**runs[0], "settings": {}, "merged_from": [str(p) for p in paths]}
    seeds = []
    for name in runs[0]["settings"]:
        per_seed, timings = {}, []
        for run_data in runs:
            entry = run_data["settings"].get(name)
            if entry is None:
                continue
            timings.append(entry.get("step_time_interleaved_s"))
            entry = {k: v for k, v in entry.items() if not k.startswith(("step_time_interleaved", "ratios_vs"))}
            items = entry.pop("per_seed", None) or {str(entry["seeds"][0]): entry}
            per_seed.update({int(seed): {k: v for k, v in e.items() if k != "seeds"} for seed, e in items.items()})
        merged = aggregate(dict(sorted(per_seed.items())))
        if all(timings):
            merged["step_time_interleaved_s"] = round(statistics.fmean(timings), 5)
        results["settings"][name] = merged
        seeds = sorted(set(seeds) | set(per_seed))
    results["config"] = {**runs[0]["config"], "seeds": seeds}
    add_ratios(results)
    results["markdown"] = markdown(results)
    return results


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse_args(argv)
    results = merge(args.merge) if args.merge else run(args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    print(results["markdown"])
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
