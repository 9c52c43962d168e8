"""BLIP-2 training stages on transformers' Blip2 classes, with the P-Former alignment prior.

transformers ships BLIP-2's architecture (`Blip2QFormerModel`, `Blip2ForImageTextRetrieval`,
`Blip2ForConditionalGeneration`) but not its pretraining losses. `Blip2StageModel` wraps one of those models and
returns every loss component in a `Blip2StageOutput`, so `VLTrainer` logs each:

Stage 1 (wraps `Blip2ForImageTextRetrieval`: frozen vision tower, Q-Former with text input):
  contrastive_loss  ITC: image-text similarity = max over the query outputs, gathered across processes.
  itm_loss          ITM: one hard negative image per text and text per image, drawn from the similarity
                    softmax with the positives excluded; binary head on the query outputs, averaged over queries.
  lm_loss           ITG: image-grounded text generation; text self-attention is causal, text sees every query,
                    queries never see text. The output layer reuses the Q-Former word embeddings.
  alignment_loss    MSE(language_projection(query outputs), stop-grad P-Former prompts) (weight 10).
Stage 2 (wraps `Blip2ForConditionalGeneration`: frozen vision tower and LM):
  lm_loss           the LM's generative loss on the caption, with the projected queries as its prefix.
  alignment_loss    MSE(projected queries, stop-grad P-Former prompts) (weight 100).

`loss` is the weighted sum (`loss_weights`); give `VLTrainer` the same weights (`loss_weights=model.loss_weights`).
"""

import copy
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval
from transformers.activations import ACT2FN
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.models.blip_2.modeling_blip_2 import BaseModelOutputWithVisionQformerOutputs
from transformers.utils import ModelOutput

from cosmo_vl.modeling.vlp_objectives import (
    LearnableTemperature,
    image_text_matching_loss,
    itm_negatives,
    positives_from_ids,
)

from .objectives import gather_features, gather_no_grad

IGNORE_INDEX = -100
DEFAULT_ALIGNMENT_WEIGHTS = {1: 10.0, 2: 100.0}


@dataclass
class Blip2StageOutput(ModelOutput):
    """Loss components (unweighted) and their weighted sum `loss`, plus the tensors they came from.

    logits_per_image / logits_per_text: (B, B_global) ITC logits (already divided by the temperature);
    image_feats: (B, Q, D) / text_feats: (B, D) normalised ITC features (named apart from CLIP's `image_embeds`:
    the score is a max over queries, already gathered across processes here);
    query_output: (B, Q, H) Q-Former query outputs; language_model_inputs: (B, Q, D_lm) projected queries;
    logits: text logits of the generation loss.
    """

    loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    itm_loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    alignment_loss: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    image_feats: torch.FloatTensor | None = None
    text_feats: torch.FloatTensor | None = None
    query_output: torch.FloatTensor | None = None
    language_model_inputs: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    temperature: torch.FloatTensor | None = None


# ------------------------------------------------------------------------------------------- loss functions


def qformer_similarity(query_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """(N, Q, D) query features x (M, D) text features -> (N, M): for each pair, the max over the N's queries."""
    return torch.einsum("nqd,md->nmq", query_feats, text_feats).max(dim=-1).values


def qformer_contrastive_loss(
    image_feats: torch.Tensor,
    text_feats: torch.Tensor,
    temperature: torch.Tensor | float,
    label_smoothing: float = 0.1,
    image_feats_all: torch.Tensor | None = None,
    text_feats_all: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BLIP-2 ITC. Normalised local image query features (B, Q, D) and text features (B, D) against the global
    batch (`*_all`, default: the local ones; `offset` = this process's first row in it). An image-text score is
    the max over the image's queries. Returns (loss, sim_i2t (B, M), sim_t2i (B, M))."""
    image_feats_all = image_feats if image_feats_all is None else image_feats_all
    text_feats_all = text_feats if text_feats_all is None else text_feats_all
    sim_i2t = qformer_similarity(image_feats, text_feats_all) / temperature  # (B, M)
    sim_t2i = qformer_similarity(image_feats_all, text_feats).t() / temperature  # (B, M)
    targets = torch.arange(image_feats.shape[0], device=image_feats.device) + offset
    loss = (
        F.cross_entropy(sim_i2t.float(), targets, label_smoothing=label_smoothing)
        + F.cross_entropy(sim_t2i.float(), targets, label_smoothing=label_smoothing)
    ) / 2
    return loss, sim_i2t, sim_t2i


def generation_attention_mask(query_length: int, text_attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (B, 1, Q + T, Q + T) mask of image-grounded generation: queries attend to queries only; text
    attends to every query and causally to the non-padding text before it (and itself)."""
    b, t = text_attention_mask.shape
    device = text_attention_mask.device
    n = query_length + t
    allowed = torch.zeros(b, n, n, dtype=torch.bool, device=device)
    allowed[:, :query_length, :query_length] = True
    allowed[:, query_length:, :query_length] = True
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    allowed[:, query_length:, query_length:] = causal[None] & text_attention_mask.bool()[:, None, :]
    allowed[:, query_length:, query_length:] |= torch.eye(t, dtype=torch.bool, device=device)[None]  # no empty row
    return torch.zeros(b, 1, n, n, dtype=dtype, device=device).masked_fill(~allowed[:, None], torch.finfo(dtype).min)


def alignment_mse(language_model_inputs: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """P-Former alignment: MSE between the projected queries (B, Q, D) and the (stop-grad) prompts (B, Q, D)."""
    if language_model_inputs.shape != prompts.shape:
        raise ValueError(
            f"projected queries {tuple(language_model_inputs.shape)} and P-Former prompts {tuple(prompts.shape)} "
            "differ: num_query_tokens must equal the P-Former's num_prompts and the widths must match."
        )
    return F.mse_loss(language_model_inputs.float(), prompts.detach().float())


class QFormerTextHead(nn.Module):
    """BERT-style LM head of the Q-Former for image-grounded generation: dense + activation + LayerNorm, then
    the (shared) word-embedding matrix as output layer, plus a bias. The embedding matrix is used functionally,
    so the wrapper's state dict holds no shared tensors."""

    def __init__(self, hidden_size: int, vocab_size: int, hidden_act: str = "gelu", layer_norm_eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = ACT2FN[hidden_act]
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden_states: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(self.activation(self.dense(hidden_states))), word_embeddings, self.bias)


# ------------------------------------------------------------------------------------------------- wrapper


class Blip2StageModel(nn.Module):
    """A BLIP-2 model plus the losses of its pretraining stage (1 or 2, from the wrapped class).

    Args:
        blip2: a `Blip2ForImageTextRetrieval` (stage 1; its Q-Former config needs `use_qformer_text_input=True`)
            or a `Blip2ForConditionalGeneration` (stage 2; needs `config.image_token_index`).
        pformer: optional trained `PFormerModel`, kept frozen as a teacher (not a submodule: it is neither trained
            nor saved with the stage model, and follows the inputs' device).
        alignment_weight: weight of the alignment term (default 10 in stage 1, 100 in stage 2).
        itc_label_smoothing: label smoothing of the ITC cross-entropy (BLIP-2: 0.1).
        itm_negatives: "sample" (from the similarity softmax, BLIP-2) or "hardest" (top-1, GRIT-VLP).
        itm_token_id / decoder_token_id: stage 1 replaces the first text token by these for ITM / ITG
            (BLIP-2's [ENC] / [DEC]); None keeps the first token.
        freeze_vision_model / freeze_language_model: BLIP-2 keeps both frozen.
    """

    def __init__(
        self,
        blip2: Blip2ForImageTextRetrieval | Blip2ForConditionalGeneration,
        pformer=None,
        alignment_weight: float | None = None,
        itc_label_smoothing: float = 0.1,
        itm_negatives: str = "sample",
        itm_token_id: int | None = None,
        decoder_token_id: int | None = None,
        freeze_vision_model: bool = True,
        freeze_language_model: bool = True,
    ):
        super().__init__()
        if isinstance(blip2, Blip2ForImageTextRetrieval):
            self.stage = 1
            if not blip2.config.qformer_config.use_qformer_text_input:
                raise ValueError("Stage 1 needs a Q-Former with text input (qformer_config.use_qformer_text_input=True).")
        elif isinstance(blip2, Blip2ForConditionalGeneration):
            self.stage = 2
            if blip2.config.image_token_index is None:
                raise ValueError("Stage 2 needs config.image_token_index: the LM input holds that many placeholders.")
            if not blip2.config.use_decoder_only_language_model:
                raise ValueError("Stage 2 supports decoder-only language models.")
        else:
            raise TypeError(f"expected Blip2ForImageTextRetrieval or Blip2ForConditionalGeneration, got {type(blip2)}.")
        self.blip2 = blip2
        self.config = blip2.config
        self.itc_label_smoothing, self.itm_negatives = itc_label_smoothing, itm_negatives
        self.itm_token_id, self.decoder_token_id = itm_token_id, decoder_token_id
        self.freeze_vision_model, self.freeze_language_model = freeze_vision_model, freeze_language_model
        qformer_config = blip2.config.qformer_config
        if self.stage == 1:
            self.temperature = LearnableTemperature(0.07, 0.001, 0.5)
            self.text_head = QFormerTextHead(
                qformer_config.hidden_size, qformer_config.vocab_size, qformer_config.hidden_act, qformer_config.layer_norm_eps
            )
        self._pformer = None
        if pformer is not None:
            self.set_pformer(pformer)
        self.alignment_weight = DEFAULT_ALIGNMENT_WEIGHTS[self.stage] if alignment_weight is None else alignment_weight
        if self.stage == 1 and pformer is not None:
            # Stage 1 learns the projection into the LM width that stage 2 starts from.
            self.language_projection = nn.Linear(qformer_config.hidden_size, pformer.prompt_head.out.out_features)
        blip2.vision_model.requires_grad_(not freeze_vision_model)
        if self.stage == 2:
            blip2.language_model.requires_grad_(not freeze_language_model)

    # ------------------------------------------------------------------------------------------- plumbing
    def set_pformer(self, pformer) -> None:
        pformer.requires_grad_(False)
        pformer.eval()
        object.__setattr__(self, "_pformer", pformer)  # a frozen teacher, outside the module tree

    @property
    def pformer(self):
        return self._pformer

    @property
    def loss_weights(self) -> dict[str, float]:
        """Weight of each component in `loss` (pass to `VLTrainingArguments(loss_weights=...)`)."""
        weights = {"lm_loss": 1.0}
        if self.stage == 1:
            weights.update(contrastive_loss=1.0, itm_loss=1.0)
        if self._pformer is not None:
            weights["alignment_loss"] = float(self.alignment_weight)
        return weights

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_vision_model:
            self.blip2.vision_model.eval()
        if self.stage == 2 and self.freeze_language_model:
            self.blip2.language_model.eval()
        return self

    def _image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, P, Dv) vision tokens; no graph through a frozen tower."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_vision_model):
            return self.blip2.vision_model(pixel_values=pixel_values).last_hidden_state

    def _queries(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """(B, Q, H) Q-Former query outputs (queries cross-attend to the image, no text)."""
        query_tokens = self.blip2.query_tokens.expand(image_embeds.shape[0], -1, -1)
        return self.blip2.qformer(query_embeds=query_tokens, encoder_hidden_states=image_embeds).last_hidden_state

    @torch.no_grad()
    def _prompts(self, input_ids, attention_mask, device) -> torch.Tensor:
        pformer = self._pformer
        if next(pformer.parameters()).device != device:
            pformer.to(device)
        return pformer.get_prompts(input_ids.to(device), None if attention_mask is None else attention_mask.to(device))

    # -------------------------------------------------------------------------------------- stage-1 parts
    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised (B, D) ITC text features: unimodal Q-Former text pass, first token."""
        text = self.blip2.qformer(
            query_embeds=self.blip2.embeddings(input_ids=input_ids), query_length=0, attention_mask=attention_mask
        ).last_hidden_state
        return F.normalize(self.blip2.text_projection(text[:, 0]), dim=-1)

    def image_features(self, query_output: torch.Tensor) -> torch.Tensor:
        """Normalised (B, Q, D) ITC image features, one per query."""
        return F.normalize(self.blip2.vision_projection(query_output), dim=-1)

    def itm_logits(self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, 2) matching logits: queries and text attend to each other (bidirectional, text padding masked),
        the head is applied to each query output and averaged over queries."""
        if self.itm_token_id is not None:
            input_ids = input_ids.clone()
            input_ids[:, 0] = self.itm_token_id
        n, q = input_ids.shape[0], self.blip2.query_tokens.shape[1]
        query_tokens = self.blip2.query_tokens.expand(n, -1, -1)
        mask = torch.cat([torch.ones(n, q, dtype=attention_mask.dtype, device=attention_mask.device), attention_mask], 1)
        hidden = self.blip2.qformer(
            query_embeds=self.blip2.embeddings(input_ids=input_ids, query_embeds=query_tokens),
            query_length=q,
            attention_mask=mask,
            encoder_hidden_states=image_embeds,
        ).last_hidden_state
        return self.blip2.itm_head(hidden[:, :q]).mean(dim=1)

    def generation_logits(
        self, image_embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-grounded generation: ((B, T, V) text logits, (B, Q, H) query outputs of the same pass)."""
        if self.decoder_token_id is not None:
            input_ids = input_ids.clone()
            input_ids[:, 0] = self.decoder_token_id
        b, q = input_ids.shape[0], self.blip2.query_tokens.shape[1]
        embeds = self.blip2.embeddings(input_ids=input_ids, query_embeds=self.blip2.query_tokens.expand(b, -1, -1))
        mask = generation_attention_mask(q, attention_mask, embeds.dtype)
        hidden = self.blip2.qformer(
            query_embeds=embeds, query_length=q, attention_mask=mask, encoder_hidden_states=image_embeds
        ).last_hidden_state
        logits = self.text_head(hidden[:, q:], self.blip2.embeddings.word_embeddings.weight)
        return logits, hidden[:, :q]

    def _stage1(self, pixel_values, input_ids, attention_mask, labels, image_ids, num_items_in_batch):
        image_embeds = self._image_embeds(pixel_values)  # (B, P, Dv)
        query_output = self._queries(image_embeds)  # (B, Q, H)
        image_feats = self.image_features(query_output)  # (B, Q, D)
        text_feats = self.text_features(input_ids, attention_mask)  # (B, D)

        # ITC against the global batch.
        image_feats_all, offset = gather_features(image_feats)
        text_feats_all, _ = gather_features(text_feats)
        temperature = self.temperature()
        contrastive_loss, sim_i2t, sim_t2i = qformer_contrastive_loss(
            image_feats, text_feats, temperature, self.itc_label_smoothing, image_feats_all, text_feats_all, offset
        )

        # ITM with hard negatives from the global batch.
        positive_mask = None
        if image_ids is not None:
            positive_mask = positives_from_ids(image_ids, gather_no_grad(image_ids))
        neg_images, neg_texts = itm_negatives(sim_i2t.detach(), sim_t2i.detach(), self.itm_negatives, positive_mask, offset)
        image_embeds_all, _ = gather_features(image_embeds, with_grad=image_embeds.requires_grad)
        ids_all, mask_all = gather_no_grad(input_ids), gather_no_grad(attention_mask)
        itm_ids = torch.cat([input_ids, input_ids, ids_all[neg_texts]])
        itm_mask = torch.cat([attention_mask, attention_mask, mask_all[neg_texts]])
        itm_images = torch.cat([image_embeds, image_embeds_all[neg_images], image_embeds])
        itm_logits = self.itm_logits(itm_images, itm_ids, itm_mask)  # (3B, 2)
        b = input_ids.shape[0]
        itm_loss = image_text_matching_loss(itm_logits[:b], itm_logits[b:])

        # Image-grounded text generation.
        logits, _ = self.generation_logits(image_embeds, input_ids, attention_mask)
        if labels is None:
            labels = input_ids.masked_fill(~attention_mask.bool(), IGNORE_INDEX)
        lm_loss = ForCausalLMLoss(logits, labels, vocab_size=logits.shape[-1], num_items_in_batch=num_items_in_batch)
        language_model_inputs = self.language_projection(query_output) if hasattr(self, "language_projection") else None
        return dict(
            contrastive_loss=contrastive_loss,
            itm_loss=itm_loss,
            lm_loss=lm_loss,
            logits_per_image=sim_i2t,
            logits_per_text=sim_t2i,
            image_feats=image_feats,
            text_feats=text_feats,
            query_output=query_output,
            language_model_inputs=language_model_inputs,
            logits=logits,
            temperature=temperature.detach(),
        )

    # -------------------------------------------------------------------------------------- stage-2 parts
    def _stage2(self, pixel_values, input_ids, attention_mask, labels, num_items_in_batch):
        blip2 = self.blip2
        image_embeds = self._image_embeds(pixel_values)
        query_output = self._queries(image_embeds)
        language_model_inputs = blip2.language_projection(query_output)  # (B, Q, D_lm)
        b, q = input_ids.shape[0], blip2.config.num_query_tokens
        placeholders = torch.full((b, q), blip2.config.image_token_index, dtype=input_ids.dtype, device=input_ids.device)
        if labels is None:
            labels = input_ids.masked_fill(~attention_mask.bool(), IGNORE_INDEX)
        features = BaseModelOutputWithVisionQformerOutputs(
            last_hidden_state=image_embeds, pooler_output=language_model_inputs, vision_outputs=None, qformer_outputs=None
        )
        extra = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        out = blip2(
            pixel_values=None,
            input_ids=torch.cat([placeholders, input_ids], 1),
            attention_mask=torch.cat([torch.ones_like(placeholders), attention_mask], 1),
            labels=torch.cat([torch.full_like(placeholders, IGNORE_INDEX), labels], 1),
            mm_encoder_outputs={"image": features},
            **extra,
        )
        return dict(lm_loss=out.loss, query_output=query_output, language_model_inputs=language_model_inputs, logits=out.logits)

    # ------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        pformer_input_ids: torch.LongTensor | None = None,
        pformer_attention_mask: torch.Tensor | None = None,
        image_ids: torch.LongTensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        return_loss: bool | None = None,
    ) -> Blip2StageOutput:
        r"""
        pixel_values: (B, C, H, W); input_ids / attention_mask: (B, T) captions (stage 1: Q-Former tokenizer,
            stage 2: LM tokenizer); labels: (B, T) generation targets (default: the ids without padding).
        pformer_input_ids / pformer_attention_mask: captions in the P-Former's tokenizer (default: `input_ids`).
        image_ids: (B,) optional image ids; captions of the same image are not used as ITM negatives.
        num_items_in_batch: label-token count of the accumulated batch (normalises `lm_loss`).
        return_loss: accepted for trainer compatibility; the ITC term is already gathered across processes here.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.stage == 1:
            parts = self._stage1(pixel_values, input_ids, attention_mask, labels, image_ids, num_items_in_batch)
        else:
            parts = self._stage2(pixel_values, input_ids, attention_mask, labels, num_items_in_batch)
        if self._pformer is not None and parts.get("language_model_inputs") is not None:
            if pformer_input_ids is None:
                pformer_input_ids, pformer_attention_mask = input_ids, attention_mask
            prompts = self._prompts(pformer_input_ids, pformer_attention_mask, parts["language_model_inputs"].device)
            parts["alignment_loss"] = alignment_mse(parts["language_model_inputs"], prompts)
        weights = self.loss_weights
        loss = sum(weights[name] * parts[name] for name in weights if parts.get(name) is not None)
        return Blip2StageOutput(loss=loss, **parts)

    # ------------------------------------------------------------------------------------- save / stage 2
    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Write the wrapped transformers model (loadable with its own class, Hub-ready) and, in stage 1, the
        extra pretraining heads (`blip2_stage1_heads.safetensors`) next to it."""
        from safetensors.torch import save_file

        self.blip2.save_pretrained(save_directory, **kwargs)
        extras = {f"{k}": v.detach().contiguous() for k, v in self.state_dict().items() if not k.startswith("blip2.")}
        if extras:
            save_file(extras, os.path.join(save_directory, f"blip2_stage{self.stage}_heads.safetensors"))

    def to_stage2(self, language_model, image_token_index: int, **kwargs) -> "Blip2StageModel":
        """A stage-2 model that starts from this stage-1 model: same vision tower, query tokens, Q-Former (its text
        branch dropped) and, with a P-Former, the stage-1 `language_projection`; `language_model` is a causal LM
        (instance) that becomes the frozen LM. Keyword arguments go to the new `Blip2StageModel`."""
        if self.stage != 1:
            raise ValueError("to_stage2 starts from a stage-1 model.")
        qformer_config = copy.deepcopy(self.config.qformer_config)
        qformer_config.use_qformer_text_input = False
        config = Blip2Config(
            vision_config=self.config.vision_config.to_dict(),
            qformer_config=qformer_config.to_dict(),
            text_config=language_model.config.to_dict(),
            num_query_tokens=self.config.num_query_tokens,
            image_token_index=image_token_index,
        )
        blip2 = Blip2ForConditionalGeneration(config)
        blip2.vision_model.load_state_dict(self.blip2.vision_model.state_dict())
        blip2.qformer.load_state_dict(self.blip2.qformer.state_dict(), strict=False)  # text FFNs are not used
        with torch.no_grad():
            blip2.query_tokens.copy_(self.blip2.query_tokens)
        if hasattr(self, "language_projection"):
            blip2.language_projection.load_state_dict(self.language_projection.state_dict())
        blip2.language_model = language_model
        kwargs.setdefault("pformer", self._pformer)
        return Blip2StageModel(blip2, **kwargs)


__all__ = [
    "Blip2StageModel",
    "Blip2StageOutput",
    "QFormerTextHead",
    "alignment_mse",
    "generation_attention_mask",
    "qformer_contrastive_loss",
    "qformer_similarity",
]
