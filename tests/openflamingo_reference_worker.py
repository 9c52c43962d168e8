"""Runs in the OpenFlamingo peer venv (see bench/_peer_env.py): builds tiny OpenFlamingo models and saves what the
conversion test needs. Started by tests/test_convert_checkpoint.py through `_peer_env.run_worker`.

    python tests/openflamingo_reference_worker.py --worker TASK_JSON --worker-output RESULT_JSON

TASK: {"output_dir", "shape": {"vision": ..., "lm": ...} (bench/_workload.py shapes), "every_n": [1, 2, ...]}.
Writes to output_dir: `lm/` (Llama folder + tokenizer, from bench/_workload.save_lm), `vision/` (the matching
CLIPVisionConfig, config only), `inputs.pt` (input_ids, attention_mask, pixel_values (B, T, 1, 3, H, W)) and per n
`openflamingo_n{n}.pt` (the full state dict) and `logits_n{n}.pt` (B, T, V).

Every vision, resampler and cross-attention parameter is perturbed away from its initial value (gates 0 -> non-zero,
norms 1/0 -> noisy) so that a wrong mapping of any of them shows in the logits; the LM stays as saved in `lm/`. The ViT is switched to `final_ln_after_pool=True`: its patch tokens then
skip `ln_post`, as in the open_clip 2.x (<= 2.20 checked) of OpenFlamingo's training (the semantics the converter reproduces).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import _workload  # noqa: E402


def make_inputs(vocab: int, image: int, seed: int = 0) -> dict:
    """Two interleaved documents with two images each; the second has text before its first image and right padding."""
    g = torch.Generator().manual_seed(seed)
    B, M, E, P = _workload.BOS, _workload.MEDIA, _workload.EOC, _workload.PAD
    words = lambda n: torch.randint(len(_workload.SPECIALS), vocab, (n,), generator=g).tolist()  # noqa: E731
    rows = [
        [B, M, *words(3), E, M, *words(4), E, *words(4)],
        [B, *words(2), M, *words(2), E, *words(1), M, *words(3), E, P, P, P],
    ]
    input_ids = torch.tensor(rows)
    attention_mask = (input_ids != P).long()
    pixel_values = torch.randn(2, 2, 1, 3, image, image, generator=g)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


@torch.no_grad()
def perturb(model, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if name.startswith("lang_encoder.") and "gated_cross_attn_layer" not in name:
            continue  # the LM stays as saved in lm/ (a trainable-only checkpoint takes it from there)
        if name.endswith(("attn_gate", "ff_gate")):
            param.copy_(0.5 + torch.rand(param.shape, generator=g))
        elif param.dim() == 1:  # norm weights / biases, biases, class embedding
            param.add_(0.1 * torch.randn(param.shape, generator=g))


def run(task: dict) -> dict:
    out = Path(task["output_dir"])
    shape = task["shape"]
    torch.manual_seed(0)
    lm_dir = _workload.save_lm(out / "lm", shape["lm"])
    _workload.clip_vision_config(shape["vision"]).save_pretrained(out / "vision")
    inputs = make_inputs(shape["lm"]["vocab"], shape["vision"]["image"])
    torch.save(inputs, out / "inputs.pt")
    result = {}
    for n in task["every_n"]:
        torch.manual_seed(n)
        model = _workload.build_openflamingo(shape, lm_dir, cross_attn_every_n_layers=n)
        model.vision_encoder.final_ln_after_pool = True
        perturb(model, seed=n)
        model.eval()
        with torch.no_grad():
            logits = model(vision_x=inputs["pixel_values"], lang_x=inputs["input_ids"],
                           attention_mask=inputs["attention_mask"]).logits
        torch.save(model.state_dict(), out / f"openflamingo_n{n}.pt")
        torch.save(logits, out / f"logits_n{n}.pt")
        blocks = [i for i, b in enumerate(model.lang_encoder.gated_cross_attn_layers) if b is not None]
        result[str(n)] = {"cross_attention_layers": blocks, "logits_shape": list(logits.shape)}
    from importlib.metadata import version

    result["versions"] = {p: version(p) for p in ("open-flamingo", "open_clip_torch", "torch", "transformers")}
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True)
    parser.add_argument("--worker-output", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = run(json.loads(args.worker))
    Path(args.worker_output).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
