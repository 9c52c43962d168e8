"""A Trainer for vision-language objectives: composes, normalises and logs each loss component.

The model returns its loss components unweighted (`lm_loss`, `contrastive_loss`, ...). Each has a normalisation
kind, and the trainer scales it so that gradient accumulation and DDP give the gradients of the large batch:

- "token": a mean over label tokens. The model divides by `num_items_in_batch` (the label tokens of the whole
  accumulated batch, of every process when `average_tokens_across_devices`), so micro-steps simply add up.
- "batch": a mean over the samples of one micro-batch (contrastive, ITM, distillation, alignment, ...). It is
  divided by the accumulation steps; its in-batch negatives come from one micro-batch (of every process when
  `gather_contrastive`), so accumulation averages micro-batch losses, it does not enlarge the set of negatives.
"""

import inspect

import torch
import torch.distributed as dist
from transformers import Trainer
from transformers.trainer_utils import unwrap_peft_model

from .checkpoints import SafetensorsCheckpointMixin
from .losses import distributed_contrastive_loss, world

LOSS_KINDS: dict[str, str] = {
    "lm_loss": "token",
    "contrastive_loss": "batch",
    "itm_loss": "batch",
    "distillation_loss": "batch",
    "alignment_loss": "batch",
}


def register_loss_component(name: str, kind: str) -> None:
    """Declare the model-output field `name` a loss component, normalised per "token" or per "batch".
    Register on every process alike (at import time): the logged components are reduced in registry order."""
    if kind not in ("token", "batch"):
        raise ValueError(f"kind must be 'token' or 'batch', got {kind!r}")
    LOSS_KINDS[name] = kind


def canonical_loss_name(name: str) -> str:
    """'contrastive' -> 'contrastive_loss' when only the latter is registered."""
    return name if name in LOSS_KINDS or f"{name}_loss" not in LOSS_KINDS else f"{name}_loss"


# ------------------------------------------------------------------------------------------------ batch types
def _one_media_per_sample(inputs: dict) -> bool:
    pixel_values, media_mask = inputs.get("pixel_values"), inputs.get("media_mask")
    if pixel_values is None:
        return False
    if media_mask is not None:
        return bool((media_mask.sum(-1) == 1).all())
    return pixel_values.dim() == 4 or pixel_values.shape[1] == 1


def _max_frames(inputs: dict) -> int:
    pixel_values, frame_mask = inputs.get("pixel_values"), inputs.get("frame_mask")
    if pixel_values is None or pixel_values.dim() < 6:
        return 1
    return int(frame_mask.sum(-1).max()) if frame_mask is not None else pixel_values.shape[2]


def batch_type(inputs: dict) -> str:
    """"pair" (exactly one single-frame image per sample), "video" (clips of more than one frame) or
    "interleaved" (anything else: several media per sample, or none)."""
    frames = _max_frames(inputs)
    if frames == 1 and _one_media_per_sample(inputs):
        return "pair"
    return "video" if frames > 1 else "interleaved"


# ----------------------------------------------------------------------------------------------------- meter
class LossMeter:
    """Running (sum, count) per logged name; `reduce` sums both over processes and returns sum / count."""

    def __init__(self):
        self.totals: dict[str, list] = {}

    def add(self, name: str, total, count) -> None:
        entry = self.totals.setdefault(name, [0.0, 0.0])
        entry[0], entry[1] = entry[0] + total, entry[1] + count

    def reduce(self, names: list[str], device) -> dict[str, float]:
        """Means of `names` (the same list on every process) over the window; resets the meter."""
        _, size = world()
        if size == 1:
            names = [n for n in names if n in self.totals]
        if not names:
            return {}
        zero = [0.0, 0.0]
        values = torch.stack(
            [torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device)
                          for v in self.totals.get(n, zero)]) for n in names]
        )  # (N, 2)
        if size > 1:
            dist.all_reduce(values)
        self.totals.clear()
        return {n: float(s / c) for n, (s, c) in zip(names, values.tolist()) if c > 0}


class VLTrainer(SafetensorsCheckpointMixin, Trainer):
    """`Trainer` that builds the loss from the model's component losses, exact under gradient accumulation and
    DDP; recomputes the contrastive term against every process's embeddings; logs each component (unweighted,
    averaged over the logging window and the processes) next to `loss`, and as `eval_<name>` when evaluating.

    Component weights: `args.loss_weights`, else the model's `loss_weights`, else its config's `<name>_weight`,
    else 1. Callbacks with a `bind_trainer` method (e.g. `LossWeightWarmupCallback`) are bound to the trainer.
    """

    # compute_loss scales every component for gradient accumulation itself: Trainer must not divide again.
    loss_is_scaled_for_ga = True
    # Batch types whose components are also logged as `<type>_<component>` (see CosmoTrainer).
    logged_batch_types: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        params = inspect.signature(self._base_model().forward).parameters  # a PEFT wrapper passes **kwargs on
        takes_kwargs = any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())
        # True when forward takes `num_items_in_batch`: Trainer then counts the accumulated (global) label tokens.
        self.model_accepts_loss_kwargs = "num_items_in_batch" in params or takes_kwargs
        self._accepts_return_loss = "return_loss" in params
        self.loss_weights = {canonical_loss_name(k): float(v) for k, v in (self.args.loss_weights or {}).items()}
        self._meters = {"train": LossMeter(), "eval": LossMeter()}
        self._bind_callbacks()

    def _base_model(self):
        return unwrap_peft_model(self.accelerator.unwrap_model(self.model))

    def _bind_callbacks(self) -> None:
        for callback in self.callback_handler.callbacks:
            if hasattr(callback, "bind_trainer"):
                callback.bind_trainer(self)

    def add_callback(self, callback) -> None:
        super().add_callback(callback)
        self._bind_callbacks()

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns += [c for c in ("batch_type", "return_loss") if c not in self._signature_columns]

    # ---------------------------------------------------------------------------------------------- weights
    def loss_weight(self, name: str) -> float:
        if name in self.loss_weights:
            return self.loss_weights[name]
        model = self._base_model()
        model_weights = getattr(model, "loss_weights", None)
        if isinstance(model_weights, dict) and name in model_weights:
            return float(model_weights[name])
        return float(getattr(getattr(model, "config", None), f"{name}_weight", 1.0))

    def set_loss_weight(self, name: str, weight: float) -> None:
        self.loss_weights[canonical_loss_name(name)] = float(weight)

    def batch_weight(self, kind: str) -> float:
        """Weight of a whole batch of type `kind` ("pair", "interleaved", "video"); 1 here."""
        return 1.0

    def contrastive_enabled(self, kind: str, inputs: dict) -> bool:
        """Whether this batch gets the contrastive term (`args.contrastive_on`)."""
        mode = self.args.contrastive_on
        return (mode == "pairs" and kind == "pair") or (mode == "all" and _one_media_per_sample(inputs))

    def _gather_contrastive(self, model, contrastive: bool) -> bool:
        """Gather only when every process has a contrastive batch (the collectives must match); otherwise each
        process with one uses its local term."""
        _, size = world()
        if size == 1 or not self.args.gather_contrastive or not model.training or self.args.contrastive_on == "none":
            return False
        flag = torch.tensor([float(contrastive)], device=self.args.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    # ------------------------------------------------------------------------------------------------- loss
    def _label_tokens(self, inputs: dict):
        if "shift_labels" in inputs:
            labels = inputs["shift_labels"]
        else:
            labels = inputs["labels"][..., 1:] if getattr(self, "_loss_shifts_labels", True) else inputs["labels"]
        return labels.ne(-100).sum()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        kind = inputs.pop("batch_type", None)
        if isinstance(kind, (list, tuple)):  # one entry per sample
            if len(set(kind)) != 1:
                raise ValueError(f"A batch mixes batch types {sorted(set(kind))}; batch each type apart.")
            kind = kind[0]
        kind = kind or batch_type(inputs)
        contrastive = self.contrastive_enabled(kind, inputs)
        gather = self._gather_contrastive(model, contrastive)
        if self._accepts_return_loss:
            inputs.setdefault("return_loss", contrastive and not gather)  # gathered: recomputed below
        use_num_items = self.model_accepts_loss_kwargs and num_items_in_batch is not None and "labels" in inputs
        if use_num_items:
            inputs["num_items_in_batch"] = num_items_in_batch
        outputs = model(**inputs)

        components = {name: getattr(outputs, name, None) for name in LOSS_KINDS}
        if not contrastive:
            components["contrastive_loss"] = None
        elif gather and components["contrastive_loss"] is None and getattr(outputs, "image_embeds", None) is not None:
            components["contrastive_loss"], _ = distributed_contrastive_loss(
                outputs.image_embeds, outputs.text_embeds, outputs.logit_scale
            )
        components = {name: value for name, value in components.items() if value is not None}
        if not components:
            if getattr(outputs, "loss", None) is None:
                raise ValueError(f"The model returned none of the loss components {sorted(LOSS_KINDS)} nor `loss`.")
            components = {"loss": outputs.loss}

        training = model.training
        meter = self._meters["train" if training else "eval"]
        accumulation = getattr(self, "current_gradient_accumulation_steps", 1) if training else 1
        # DDP averages gradients over processes; token losses were divided by the global token count.
        processes = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
        tags = [kind] if kind in self.logged_batch_types else []
        total = 0.0
        for name, value in components.items():
            if use_num_items and LOSS_KINDS.get(name, "token") == "token":
                term = value * processes
                logged = (value.detach() * num_items_in_batch, self._label_tokens(inputs))  # token sum, tokens
            else:
                term = value / accumulation
                logged = (value.detach(), 1.0)  # micro-batch mean, one micro-batch
            for key in [name] + [f"{tag}_{name}" for tag in tags]:
                meter.add(key, *logged)
            total = total + self.loss_weight(name) * term
        total = self.batch_weight(kind) * total
        return (total, outputs) if return_outputs else total

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Loss through `compute_loss` (so components are logged as `eval_<name>`); logits only when asked."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        loss = loss.detach().mean()
        if prediction_loss_only:
            return loss, None, None
        logits = getattr(outputs, "logits", None)
        return loss, None if logits is None else logits.detach(), inputs.get("labels")

    # ------------------------------------------------------------------------------------------------- logs
    def _logged_names(self) -> list[str]:
        return list(LOSS_KINDS) + [f"{tag}_{name}" for tag in self.logged_batch_types for name in LOSS_KINDS]

    def train(self, *args, **kwargs):
        self._meters["train"].totals.clear()
        return super().train(*args, **kwargs)

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._meters["eval"].totals.clear()
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        components = self._meters["eval"].reduce(self._logged_names(), self.args.device)
        output.metrics.update({f"{metric_key_prefix}_{name}": value for name, value in components.items()})
        return output

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:  # a training log: every process gets here (the reduction is collective)
            logs.update(self._meters["train"].reduce(self._logged_names(), self.args.device))
        super().log(logs, *args, **kwargs)
