"""A Trainer for vision-language objectives: composes, normalises and logs each loss component.

The model returns its loss components unweighted (`lm_loss`, `contrastive_loss`, ...). Each has a normalisation
kind, and the trainer scales it so that gradient accumulation and DDP give the gradients of the large batch:

- "token": a mean over label tokens. The model divides by `num_items_in_batch` (the label tokens of the whole
  accumulated batch, of every process when `average_tokens_across_devices`), so micro-steps simply add up.
- "batch": a mean over the samples of one micro-batch (contrastive, ITM, distillation, alignment, ...). It is
  divided by the accumulation steps; its in-batch negatives come from one micro-batch (of every process when
  `gather_contrastive`), so accumulation averages micro-batch losses, it does not enlarge the set of negatives.

The shared VLP objectives are options of `VLTrainingArguments` (see `vlp_options`): image-text matching with
in-batch hard negatives (`itm_loss`), momentum distillation with queues (replaces `contrastive_loss` by ALBEF's
term) and GRIT-VLP grouped hard-negative batches. They run on training batches that get the contrastive term; a
model's trainer provides the fused ITM representation and the contrastive path (`CosmoTrainer` does for CosMo).
"""

import inspect
import logging
import math
import os

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length, unwrap_peft_model

from cosmo_vl.modeling.vlp_objectives import alpha_ramp, image_text_matching_loss, itm_negatives, momentum_contrastive_loss

from .callbacks import DatasetEpochCallback
from .checkpoints import SafetensorsCheckpointMixin
from .losses import distributed_contrastive_loss, world
from .objectives import GroupedHardNegativeSampler, enqueue_gathered, gather_no_grad
from .streaming import StreamingTrainerMixin
from .vlp_options import (
    CHECKPOINT_NAME,
    INDEX_KEY,
    SAMPLER_CHECKPOINT_NAME,
    IndexedCollator,
    IndexedDataset,
    ObjectiveState,
    momentum_features,
    same_text_mask,
)

logger = logging.getLogger(__name__)

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


class VLTrainer(StreamingTrainerMixin, SafetensorsCheckpointMixin, Trainer):
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
        self.add_callback(DatasetEpochCallback())  # per-epoch caption draws, also under DDP
        self._bind_callbacks()
        self._setup_objectives()

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
        extra = ("batch_type", "return_loss", INDEX_KEY)
        self._signature_columns += [c for c in extra if c not in self._signature_columns]

    # ---------------------------------------------------------------------------------- shared VLP objectives
    def _setup_objectives(self) -> None:
        """Build what the options of `VLTrainingArguments` need: the ITM head, the momentum encoder and queues
        (`self.objectives`), and for the GRIT sampler the dataset indices carried into each batch."""
        args = self.args
        self.objectives: ObjectiveState | None = None
        self._grit_sampler: GroupedHardNegativeSampler | None = None
        self._grit_resume_state: dict | None = None
        self._ema_step, self._heads_zeroed_at = 0, -1
        if args.grit_sampler and self.train_dataset is not None:
            if isinstance(self.train_dataset, torch.utils.data.IterableDataset) or not has_length(self.train_dataset):
                raise ValueError("grit_sampler needs a map-style training dataset (with __len__ and indexing).")
            self.train_dataset = IndexedDataset(self.train_dataset)
            self.data_collator = IndexedCollator(self.data_collator)
        itm, momentum = args.itm_loss_weight > 0, args.momentum_distillation
        if not (itm or momentum):
            return
        model = self._base_model()
        if itm and "itm_loss" not in self.loss_weights:
            self.set_loss_weight("itm_loss", args.itm_loss_weight)
        params = {}
        if momentum:
            names = set(self.momentum_parameter_names(model))
            params = {n: p for n, p in model.named_parameters() if n in names}
        self.objectives = ObjectiveState(
            itm_hidden_size=self.itm_hidden_size(model) if itm else None,
            momentum_parameters=params,
            queue_size=args.momentum_queue_size if momentum else 0,
            feature_dim=self.contrastive_dim(model) if momentum else None,
        ).to(args.device)

    # Model-specific parts, overridden per architecture (see CosmoTrainer).
    def itm_hidden_size(self, model) -> int:
        """Width of the fused (image, text) representation the ITM head classifies."""
        raise NotImplementedError(f"{type(self).__name__} has no ITM fusion for {type(model).__name__}.")

    def itm_positive_fused(self, model, inputs: dict, outputs):
        """(B, H) fused representation of the batch's own pairs (from the training forward when possible)."""
        rows = torch.arange(inputs["input_ids"].shape[0], device=inputs["input_ids"].device)
        return self.itm_fused(model, inputs, outputs, rows, rows)

    def itm_fused(self, model, inputs: dict, outputs, image_index: torch.Tensor, text_index: torch.Tensor):
        """(N, H) fused representation of the pairs (image `image_index[k]`, text `text_index[k]`) of the batch."""
        raise NotImplementedError(f"{type(self).__name__} has no ITM fusion for {type(model).__name__}.")

    def itm_gather(self, model, inputs: dict, outputs) -> tuple[dict, object]:
        """(inputs, outputs) of the global batch, in the form `itm_fused` reads, the media features gathered with
        gradients (a negative's image then trains the process that encoded it, as ALBEF's all_gather_with_grad)."""
        raise NotImplementedError(f"{type(self).__name__} cannot gather ITM pairs across processes.")

    def contrastive_features(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (image, text) contrastive features of a pair batch, as the training forward computes them."""
        image_kwargs = {k: inputs[k] for k in ("media_mask", "frame_mask") if inputs.get(k) is not None}
        return (
            model.get_image_features(inputs["pixel_values"], **image_kwargs, return_dict=True).pooler_output,
            model.get_text_features(inputs["input_ids"], inputs.get("attention_mask"), return_dict=True).pooler_output,
        )

    def momentum_parameter_names(self, model) -> list[str]:
        """Trainable parameters the contrastive features depend on (the momentum encoder tracks these)."""
        return [n for n, p in model.named_parameters() if p.requires_grad]

    def contrastive_dim(self, model) -> int:
        config = getattr(model, "config", None)
        dim = getattr(config, "contrastive_dim", None) or getattr(config, "projection_dim", None)
        if dim is None:
            raise ValueError("momentum_distillation: cannot tell the contrastive feature width from the config.")
        return int(dim)

    def _objective_parameters(self) -> list:
        return [] if self.objectives is None else self.objectives.trainable_parameters()

    def _distillation_warmup(self) -> int:
        if self.args.distillation_warmup_steps is not None:
            return self.args.distillation_warmup_steps
        return math.ceil(self.state.max_steps / max(1, self.state.num_train_epochs))  # one epoch

    def _objective_terms(self, model, inputs: dict, outputs, gathered: bool = False) -> dict:
        """`contrastive_loss` with momentum distillation and/or `itm_loss`, for a training contrastive batch."""
        terms: dict = {}
        base = self._base_model()
        state = self.objectives
        if state.has_momentum:
            step = self.state.global_step
            if step != self._ema_step:  # once per optimizer step, on its first micro-batch
                state.ema_update(dict(base.named_parameters()), self.args.momentum)
                self._ema_step = step
            image_m, text_m = momentum_features(base, state.momentum_dict(), self.contrastive_features, inputs)
            image_m, text_m = image_m.float(), text_m.float()
            queues = (state.image_queue, state.text_queue)
            image_q, text_q = (q.features if q is not None and len(q) else None for q in queues)
            terms["contrastive_loss"] = momentum_contrastive_loss(
                outputs.image_embeds.float(), outputs.text_embeds.float(), image_m, text_m,
                1.0 / outputs.logit_scale.float(), alpha_ramp(step, self._distillation_warmup(),
                                                              self.args.distillation_alpha), image_q, text_q,
            )
            if state.image_queue is not None:
                enqueue_gathered(state.image_queue, image_m)
                enqueue_gathered(state.text_queue, text_m)
        if state.itm_head is not None:
            itm = self._itm_loss(base, inputs, outputs, gathered=gathered)
            if itm is not None:
                terms["itm_loss"] = itm
        return terms

    def _itm_loss(self, model, inputs: dict, outputs, gathered: bool = False):
        """ITM on the B positive pairs and 2B hard negatives (one image per text, one text per image) drawn from the
        contrastive similarities against the global batch when `gathered` (every process has a contrastive batch),
        else the local one; None when every caption of that batch is the same."""
        b = inputs["input_ids"].shape[0]
        if gathered:
            pool_inputs, pool_outputs = self.itm_gather(model, inputs, outputs)
            images = gather_no_grad(outputs.image_embeds.detach())  # (N, D)
            texts = gather_no_grad(outputs.text_embeds.detach())
            offset = world()[0] * b
        else:
            pool_inputs, pool_outputs, offset = inputs, outputs, 0
            images, texts = outputs.image_embeds.detach(), outputs.text_embeds.detach()
        scale = outputs.logit_scale.detach()
        sim_i2t = scale * outputs.image_embeds.detach() @ texts.t()  # (B, N): local images vs pool texts
        sim_t2i = scale * outputs.text_embeds.detach() @ images.t()  # (B, N): local texts vs pool images
        # Pool pair j is a positive of local pair i when its caption is pair i's (so both directions share the mask).
        positives = same_text_mask(inputs["input_ids"], inputs.get("attention_mask"), pool_inputs["input_ids"],
                                   pool_inputs.get("attention_mask"))
        if b < 2 or bool(positives.all(dim=1).any()):  # the same on every process: all captions are one text
            return None
        neg_images, neg_texts = itm_negatives(sim_i2t, sim_t2i, self.args.itm_negatives, positives)  # (B,) pool indices
        rows = torch.arange(b, device=sim_i2t.device) + offset
        fused = torch.cat([
            self.itm_positive_fused(model, inputs, outputs),  # (B, H) matched
            self.itm_fused(model, pool_inputs, pool_outputs, torch.cat([neg_images, rows]),
                           torch.cat([rows, neg_texts])),
        ])  # (3B, H)
        head = self.objectives.itm_head
        logits = head(fused.to(head.classifier.weight.dtype))
        return image_text_matching_loss(logits[:b], logits[b:])

    @torch.no_grad()
    def _record_grit(self, outputs, dataset_index) -> None:
        """Hand the batch's embeddings to the GRIT sampler (collective with several processes)."""
        if self._grit_sampler is None or dataset_index is None:
            return
        embeds = outputs.image_embeds
        ok = dataset_index.numel() == embeds.shape[0] and bool((dataset_index >= 0).all())
        if world()[1] > 1:  # a process whose collator dropped samples skips: all must skip together
            flag = torch.tensor([float(ok)], device=embeds.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            ok = bool(flag.item())
        if ok:
            self._grit_sampler.record(embeds, outputs.text_embeds, indices=dataset_index.to(embeds.device))

    def _get_train_sampler(self, train_dataset=None):
        if not self.args.grit_sampler:
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        # One process's view (num_replicas=1): accelerate hands consecutive batches to consecutive processes, so
        # every global batch stays one piece of a chain.
        self._grit_sampler = GroupedHardNegativeSampler(
            len(dataset), self._train_batch_size, self.args.grit_search_size, seed=self.args.seed,
            drop_last=self.args.dataloader_drop_last,
        )
        if self._grit_resume_state is not None:  # the checkpoint was read before the dataloader was built
            self._grit_sampler.load_state_dict(self._grit_resume_state)
        return self._grit_sampler

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        params = [p for p in self._objective_parameters() if id(p) not in present]
        if params:  # the trainer's own heads: weights decay, biases do not (as Trainer groups the model's)
            optimizer.add_param_group({"params": [p for p in params if p.ndim >= 2], "weight_decay": self.args.weight_decay})
            optimizer.add_param_group({"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0})
        return optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        heads = self._objective_parameters()
        if heads and self._heads_zeroed_at != self.state.global_step:  # Trainer zeroes only the model's grads
            for p in heads:
                p.grad = None
            self._heads_zeroed_at = self.state.global_step
        loss = super().training_step(model, inputs, num_items_in_batch)
        _, size = world()
        if heads and size > 1 and self.accelerator.sync_gradients:  # not under DDP: average them ourselves
            for p in heads:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad.div_(size)
        return loss

    def _save_checkpoint(self, model, trial) -> None:
        if (self.objectives is not None or self._grit_sampler is not None) and self.args.should_save:
            # Written before the Trainer's files, so a folder with a trainer_state.json has them too.
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            os.makedirs(folder, exist_ok=True)
            if self.objectives is not None:
                state = {k: v.detach().contiguous() for k, v in self.objectives.state_dict().items()}
                save_file(state, os.path.join(folder, CHECKPOINT_NAME))
            if self._grit_sampler is not None:  # the same on every process: the embeddings are gathered
                save_file(self._grit_sampler.state_dict(), os.path.join(folder, SAMPLER_CHECKPOINT_NAME))
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        sampler_path = os.path.join(resume_from_checkpoint, SAMPLER_CHECKPOINT_NAME)
        if self.args.grit_sampler and os.path.isfile(sampler_path):
            self._grit_resume_state = load_file(sampler_path)
            if self._grit_sampler is not None:  # the dataloader was built first
                self._grit_sampler.load_state_dict(self._grit_resume_state)
        elif self.args.grit_sampler:
            logger.warning("%s has no %s: the GRIT sampler starts its epoch with a new order.",
                           resume_from_checkpoint, SAMPLER_CHECKPOINT_NAME)
        if self.objectives is None:
            return
        path = os.path.join(resume_from_checkpoint, CHECKPOINT_NAME)
        if os.path.isfile(path):
            self.objectives.load_state_dict(load_file(path, device=str(self.args.device)))
        else:
            logger.warning("%s has no %s: the ITM head / momentum encoder start afresh.", resume_from_checkpoint,
                           CHECKPOINT_NAME)

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
        dataset_index = inputs.pop(INDEX_KEY, None)
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
        objectives = model.training and contrastive and self.objectives is not None
        if objectives and self.objectives.itm_head is not None:
            inputs["output_hidden_states"] = True  # the fused states of the matched pairs
        outputs = model(**inputs)

        components = {name: getattr(outputs, name, None) for name in LOSS_KINDS}
        if not contrastive:
            components["contrastive_loss"] = None
        elif gather and components["contrastive_loss"] is None and getattr(outputs, "image_embeds", None) is not None:
            components["contrastive_loss"], _ = distributed_contrastive_loss(
                outputs.image_embeds, outputs.text_embeds, outputs.logit_scale
            )
        if model.training and contrastive and getattr(outputs, "image_embeds", None) is not None:
            if objectives:
                components.update(self._objective_terms(model, inputs, outputs, gathered=gather))
            self._record_grit(outputs, dataset_index)
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
