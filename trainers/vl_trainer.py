"""A Trainer for vision-language objectives: composes, normalises and logs each loss component."""

import json
from collections import defaultdict

import torch
import torch.distributed as dist
from transformers import Trainer

from .losses import distributed_contrastive_loss, world

# Normalisation kind of each component the models return: "token" losses are averaged over the label tokens of
# the whole accumulated (and, across processes, global) batch by the model via `num_items_in_batch`; "batch"
# losses are means over one micro-batch and are divided by the accumulation steps here.
LOSS_KINDS: dict[str, str] = {
    "lm_loss": "token",
    "contrastive_loss": "batch",
    "itm_loss": "batch",
    "distillation_loss": "batch",
    "alignment_loss": "batch",
}


def register_loss_component(name: str, kind: str) -> None:
    """Declare a new `<name>` field of model outputs as a loss component ("token" or "batch")."""
    if kind not in ("token", "batch"):
        raise ValueError(f"kind must be 'token' or 'batch', got {kind!r}")
    LOSS_KINDS[name] = kind


class VLTrainer(Trainer):
    """`Trainer` that builds the loss from the model's component losses so that it is exact under gradient
    accumulation and DDP, recomputes the contrastive term over all processes, and logs every component."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The model normalises token losses by `num_items_in_batch`; this trainer scales every component itself.
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        weights = self.args.loss_weights
        self.loss_weights = json.loads(weights) if isinstance(weights, str) else dict(weights or {})
        self._sums: dict[str, dict[str, float]] = {"train": defaultdict(float), "eval": defaultdict(float)}
        self._counts = {"train": 0, "eval": 0}

    # ---------------------------------------------------------------------------------------------- weights
    def component_weight(self, name: str, model) -> float:
        if name in self.loss_weights:
            return float(self.loss_weights[name])
        if name == "contrastive_loss":
            return float(getattr(self.accelerator.unwrap_model(model).config, "contrastive_loss_weight", 1.0))
        return 1.0

    def model_inputs(self, inputs: dict) -> tuple[dict, float]:
        """Hook for subclasses: (inputs for the forward, weight of this batch)."""
        return inputs, 1.0

    # ------------------------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs, batch_weight = self.model_inputs(dict(inputs))
        rank, size = world()
        gather = self.args.gather_contrastive and size > 1 and model.training
        if gather and "return_loss" not in inputs:
            inputs["return_loss"] = False  # recomputed below over the global batch
        outputs = model(**inputs, num_items_in_batch=num_items_in_batch)
        components = {name: getattr(outputs, name, None) for name in LOSS_KINDS}
        if gather and getattr(outputs, "image_embeds", None) is not None and outputs.logit_scale is not None:
            components["contrastive_loss"], _ = distributed_contrastive_loss(
                outputs.image_embeds, outputs.text_embeds, outputs.logit_scale
            )
        accumulation = self.current_gradient_accumulation_steps if model.training else 1
        processes = size if (self.args.average_tokens_across_devices and num_items_in_batch is not None) else 1
        total, mode = None, "train" if model.training else "eval"
        for name, value in components.items():
            if value is None:
                continue
            if LOSS_KINDS[name] == "token" and num_items_in_batch is not None:
                scaled = value * processes  # DDP averages gradients; the model divided by the global count
                logged = value.detach()  # partial sums of the global mean (summed across processes when logged)
            else:
                scaled = value / accumulation
                logged = value.detach() / accumulation / size  # mean over micro-steps and processes
            self._sums[mode][name] += float(logged)
            term = self.component_weight(name, model) * batch_weight * scaled
            total = term if total is None else total + term
        if total is None:
            total = outputs.loss
        return (total, outputs) if return_outputs else total

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._micro_step_closes_a_step():
            self._counts["train"] += 1
        return loss

    def _micro_step_closes_a_step(self) -> bool:
        self._micro = getattr(self, "_micro", 0) + 1
        if self._micro >= self.current_gradient_accumulation_steps:
            self._micro = 0
            return True
        return False

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        with torch.no_grad():
            loss = self.compute_loss(model, self._prepare_inputs(inputs))
        self._counts["eval"] += 1
        return loss.detach(), None, None

    # ------------------------------------------------------------------------------------------------- logs
    def _reduced_components(self, mode: str) -> dict[str, float]:
        names = sorted(self._sums[mode])
        if not names or self._counts[mode] == 0:
            return {}
        values = torch.tensor([self._sums[mode][n] for n in names], dtype=torch.float64, device=self.args.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(values)  # token parts are partial sums, batch parts were pre-divided by world size
        out = {n: float(v) / self._counts[mode] for n, v in zip(names, values.tolist())}
        self._sums[mode].clear()
        self._counts[mode] = 0
        return out

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:
            logs.update(self._reduced_components("train"))
        elif any(key.startswith("eval_") for key in logs):
            logs.update({f"eval_{k}": v for k, v in self._reduced_components("eval").items()})
        super().log(logs, *args, **kwargs)
