"""Training-step time of CosMo with each speed switch against the same step with every switch off, on CPU.

    python bench/train_switches.py --output train_switches.json                 # cosmo-tiny and cosmo-mid
    python bench/train_switches.py --output f.json --compile --steps 10 --repeats 3

Switches, one at a time against `off` (fp32, SDPA attention in the LM, eager PyTorch, no checkpointing):
  bf16                    forward and loss under `torch.autocast("cpu", dtype=torch.bfloat16)`
  eager_attention         the LM's `attn_implementation="eager"` instead of "sdpa" (ratio > 1: SDPA is faster)
  compile                 `torch.compile` of the trainable blocks (gated cross-attention blocks + resampler);
                          only with --compile; a failure is recorded as the entry's `error`
  gradient_checkpointing  non-reentrant activation checkpointing of the LM decoder layers

Each measured step is forward + backward + AdamW step on the same collated batch of the embedded data, after
warm-up steps (compilation happens there and is reported as `warmup_s`). `step_s` is the median over
`--repeats` rounds of `--steps` steps; configurations run in interleaved rounds so that machine load drifts
hit every switch alike. CPU timings are noisy (shared cores, frequency scaling): read ratios within ~10% of
1.0 as "no difference".
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cosmo_vl.modeling import CosmoForConditionalGeneration  # noqa: E402
from cosmo_vl.presets import get_config, get_processor  # noqa: E402
from cosmo_vl.processing import VLCollator, load_any  # noqa: E402

SWITCHES = ("off", "bf16", "eager_attention", "compile", "gradient_checkpointing")


def mid_config():
    """cosmo-tiny with wider towers (vision 256, LM 512 wide) and a wider resampler / cross-attention."""
    config = get_config("cosmo-tiny")
    v, t = config.vision_config, config.text_config
    v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads = 256, 1024, 4, 8
    t.hidden_size, t.intermediate_size, t.num_attention_heads, t.num_key_value_heads = 512, 1536, 8, 4
    t.head_dim = t.hidden_size // t.num_attention_heads
    config.cross_attention_heads, config.cross_attention_head_dim = 8, 64
    config.resampler_heads, config.resampler_head_dim = 8, 32
    return config


CONFIGS = {"cosmo-tiny": lambda: get_config("cosmo-tiny"), "cosmo-mid": mid_config}


def build(config_name: str, switch: str, seed: int = 0):
    """(model, optimizer) for one switch; every switch starts from the same weights."""
    torch.manual_seed(seed)
    model = CosmoForConditionalGeneration(CONFIGS[config_name]())
    attn = "eager" if switch == "eager_attention" else "sdpa"
    model.model.language_model.set_attn_implementation(attn)
    assert model.model.language_model.config._attn_implementation == attn
    if switch == "gradient_checkpointing":
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if switch == "compile":
        model.model.resampler.compile()
        for layer in model.model.language_model.layers:
            if layer.cross_attention is not None:
                layer.cross_attention.compile()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, optimizer


def train_step(model, optimizer, batch, switch: str) -> float:
    if switch == "bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batch).loss
    else:
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def make_batch(batch_size: int, max_length: int) -> dict:
    processor = get_processor("cosmo-tiny")
    data = load_any("shapes-captions")["train"].select(range(batch_size))
    return VLCollator(processor, max_length=max_length, truncation=True)([data[i] for i in range(batch_size)])


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    batch = make_batch(args.batch_size, args.max_length)
    switches = [s for s in SWITCHES if s != "compile" or args.compile]
    results: dict = {
        "note": "CPU timings are noisy (shared cores, frequency scaling); ratios within ~10% of 1.0 mean no "
                "measurable difference. ratio_vs_off = step_s / off.step_s (< 1 is faster).",
        "settings": {k: v for k, v in vars(args).items() if k != "output"} | {
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "batch_shape": list(batch["input_ids"].shape),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "configs": {},
    }
    for name in args.configs:
        state: dict = {}
        entries: dict = {}
        for switch in switches:
            entry: dict = {}
            try:
                model, optimizer = build(name, switch)
                start = time.perf_counter()
                losses = [train_step(model, optimizer, batch, switch) for _ in range(args.warmup)]
                entry["warmup_s"] = round(time.perf_counter() - start, 3)
                entry["first_loss"] = round(losses[0], 4) if losses else None
                state[switch] = (model, optimizer)
                entry["rounds"] = []
                if switch == "off":
                    entry["params"] = sum(p.numel() for p in model.parameters())
            except Exception as err:  # compile without a working C++ toolchain, an unsupported dtype, ...
                entry["error"] = f"{type(err).__name__}: {err}"[:2000]
                entry["traceback_tail"] = traceback.format_exc().splitlines()[-6:]
            entries[switch] = entry
        # Interleaved rounds: every live switch measures `steps` steps per round.
        for _ in range(args.repeats):
            for switch, (model, optimizer) in list(state.items()):
                try:
                    start = time.perf_counter()
                    for _ in range(args.steps):
                        train_step(model, optimizer, batch, switch)
                    entries[switch]["rounds"].append((time.perf_counter() - start) / args.steps)
                except Exception as err:
                    entries[switch]["error"] = f"{type(err).__name__}: {err}"[:2000]
                    del state[switch]
        for switch, entry in entries.items():
            if entry.get("rounds"):
                entry["step_s"] = round(statistics.median(entry["rounds"]), 4)
                entry["rounds"] = [round(r, 4) for r in entry["rounds"]]
        off = entries.get("off", {}).get("step_s")
        for switch, entry in entries.items():
            if off and entry.get("step_s"):
                entry["ratio_vs_off"] = round(entry["step_s"] / off, 3)
        results["configs"][name] = entries
        results["settings"][f"load_average_after_{name}"] = [round(x, 2) for x in os.getloadavg()]
        state.clear()
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="JSON file to write.")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--compile", action="store_true", help="Also time torch.compile of the trainable blocks.")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=48)
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps per switch (compilation happens here).")
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per round.")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved rounds; step_s is their median.")
    parser.add_argument("--threads", type=int, default=max(1, min(os.cpu_count() or 1, 4)))
    return parser.parse_args(argv)


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no pool of compile workers beside the timings
    args = parse_args(argv)
    results = run(args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=2))
    for name, entries in results["configs"].items():
        for switch, entry in entries.items():
            shown = entry.get("error") or f"{entry.get('step_s')} s/step  x{entry.get('ratio_vs_off')}"
            print(f"{name:11s} {switch:24s} {shown[:160]}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
