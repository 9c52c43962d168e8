"""P-Former: sentence -> bidirectional encoder [CLS] -> n soft prompts that let a frozen causal LM reconstruct it.

Stage 0 is text only. With 25% of the encoder's input tokens masked, the loss is

    lm_loss              the frozen LM reconstructs the whole sentence from the n predicted prompts (prefix),
  + contrastive_loss     self-contrastive InfoNCE between two differently masked views of each sentence
                         (256-d [CLS] projection, learnable temperature, label smoothing 0.1),
  + word_embedding_loss  MSE pulling every prompt to its nearest LM word embedding (embeddings stop-grad).

Afterwards `get_prompts` gives the alignment targets for a BLIP-2 connector (see `trainers/blip2_stages.py`).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput
from transformers.utils.generic import can_return_tuple

from .configuration_pformer import PFormerConfig
from .vlp_objectives import LearnableTemperature
from .towers import mark_initialized

IGNORE_INDEX = -100


@dataclass
class PFormerOutput(ModelOutput):
    """Outputs of `PFormerModel`. `loss` is the weighted sum of the three components (each reported unweighted).

    prompts: (B, n, D_lm) predicted prompts; text_embeds: (B, contrastive_dim) normalised [CLS] projection of the
    first view; logits: (B, n + T, V) LM logits over prompts + sentence; hidden_states / attentions: the encoder's,
    for the first view, when asked for (`output_hidden_states`, `output_attentions`).
    """

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    contrastive_loss: torch.FloatTensor | None = None
    word_embedding_loss: torch.FloatTensor | None = None
    prompts: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    temperature: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class PromptHead(nn.Module):
    """[CLS] (B, H) -> Linear to n x d -> Linear + Tanh -> Linear to the LM width: (B, n, D_lm)."""

    def __init__(self, hidden_size: int, num_prompts: int, prompt_hidden_size: int, output_size: int):
        super().__init__()
        self.num_prompts, self.prompt_hidden_size = num_prompts, prompt_hidden_size
        self.expand = nn.Linear(hidden_size, num_prompts * prompt_hidden_size)
        self.dense = nn.Linear(prompt_hidden_size, prompt_hidden_size)
        self.activation = nn.Tanh()
        self.out = nn.Linear(prompt_hidden_size, output_size)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        grid = self.expand(cls).view(cls.shape[0], self.num_prompts, self.prompt_hidden_size)  # (B, n, d)
        return self.out(self.activation(self.dense(grid)))  # (B, n, D_lm)


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    probability: float,
    mask_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each real token except the first ([CLS]/BOS) with `probability`: write `mask_token_id` there, or,
    without one, drop it from attention. Returns (input_ids, attention_mask), new tensors."""
    candidates = attention_mask.bool().clone()
    candidates[:, 0] = False
    draw = torch.rand(input_ids.shape, device=input_ids.device, generator=generator)
    masked = candidates & (draw < probability)
    if mask_token_id is not None:
        return input_ids.masked_fill(masked, mask_token_id), attention_mask.clone()
    return input_ids.clone(), attention_mask.masked_fill(masked, 0)


def nearest_word_embedding_loss(prompts: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
    """MSE between each prompt (B, n, D) and its nearest (L2) row of `word_embeddings` (V, D), which gets no
    gradient."""
    flat = prompts.reshape(-1, prompts.shape[-1]).float()  # (B*n, D)
    table = word_embeddings.detach().float()  # (V, D)
    with torch.no_grad():
        dist = flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ table.t() + table.pow(2).sum(-1)[None]  # (B*n, V)
        nearest = dist.argmin(dim=-1)
    return F.mse_loss(flat, table[nearest])


def self_contrastive_loss(
    embeds_a: torch.Tensor, embeds_b: torch.Tensor, temperature: torch.Tensor, label_smoothing: float = 0.1
) -> torch.Tensor:
    """Symmetric InfoNCE between two views (B, D), normalised; the positive of row i is column i."""
    logits = embeds_a @ embeds_b.t() / temperature  # (B, B)
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (
        F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
        + F.cross_entropy(logits.t().float(), targets, label_smoothing=label_smoothing)
    ) / 2


class PFormerPreTrainedModel(PreTrainedModel):
    config_class = PFormerConfig
    base_model_prefix = "pformer"
    main_input_name = "input_ids"
    input_modalities = ("text",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _can_compile_fullgraph = False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, LearnableTemperature):
            init.constant_(module.value, self.config.temperature_init)


def _encoder_from_config(config) -> PreTrainedModel:
    try:  # BERT-like encoders: the pooler is unused (and would be an unused parameter under DDP)
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(config)


class PFormerModel(PFormerPreTrainedModel):
    """Text encoder + prompt head (trained) and a frozen causal LM that reads the prompts (stage-0 losses)."""

    def __init__(self, config: PFormerConfig, encoder: PreTrainedModel | None = None, language_model=None):
        super().__init__(config)
        if encoder is None:
            encoder = _encoder_from_config(config.encoder_config)
        else:
            mark_initialized(encoder)
        if language_model is None:
            language_model = AutoModelForCausalLM.from_config(config.text_config)
        else:
            mark_initialized(language_model)
        self.encoder = encoder
        self.language_model = language_model
        hidden = config.encoder_config.hidden_size
        lm_width = language_model.get_input_embeddings().embedding_dim
        self.prompt_head = PromptHead(hidden, config.num_prompts, config.prompt_hidden_size, lm_width)
        self.contrastive_projection = nn.Linear(hidden, config.contrastive_dim)
        self.temperature = LearnableTemperature(config.temperature_init, config.temperature_min, config.temperature_max)
        self._no_split_modules = sorted(
            set(getattr(encoder, "_no_split_modules", None) or ()) | set(language_model._no_split_modules or ())
        )
        self.post_init()
        self.apply_freezing()

    @classmethod
    def from_backbones(cls, encoder: str, language_model: str, **config_kwargs):
        """Build a P-Former around a pretrained encoder and causal LM (local paths or Hub ids); extra keyword
        arguments go to `PFormerConfig` (e.g. `num_prompts`)."""
        try:
            enc = AutoModel.from_pretrained(encoder, add_pooling_layer=False)
        except TypeError:
            enc = AutoModel.from_pretrained(encoder)
        lm = AutoModelForCausalLM.from_pretrained(language_model)
        config = cls.config_class(encoder_config=enc.config, text_config=lm.config, **config_kwargs)
        return cls(config, encoder=enc, language_model=lm)

    def apply_freezing(self) -> None:
        self.language_model.requires_grad_(not self.config.freeze_language_model)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.config.freeze_language_model:
            self.language_model.eval()  # a frozen LM runs without dropout
        return self

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.encoder.set_input_embeddings(value)

    # --------------------------------------------------------------------------------------------- encoder
    def _requested(self, hidden_states: bool | None, attentions: bool | None) -> dict:
        """`output_hidden_states` / `output_attentions` for the encoder: the arguments, else the config's."""
        return {
            "output_hidden_states": self.config.output_hidden_states if hidden_states is None else hidden_states,
            "output_attentions": self.config.output_attentions if attentions is None else attentions,
        }

    def _encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            return_dict=True,
        )

    def get_prompts(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Prompts (B, n, D_lm) of unmasked sentences: the alignment targets for a vision-language connector."""
        return self.prompt_head(self._encode(input_ids, attention_mask).last_hidden_state[:, 0])

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """Encoder outputs of unmasked sentences; `pooler_output` (B, contrastive_dim) is the normalised [CLS]
        projection of the self-contrastive term. A tuple with `return_dict=False`."""
        encoded = self._encode(input_ids, attention_mask, **self._requested(output_hidden_states, output_attentions))
        return BaseModelOutputWithPooling(
            last_hidden_state=encoded.last_hidden_state,  # (B, T, H)
            pooler_output=F.normalize(self.contrastive_projection(encoded.last_hidden_state[:, 0]), dim=-1),
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )

    def _views(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The two views of the contrastive term: independently masked in training, else the sentence itself."""
        config = self.config
        if not (self.training and config.mask_probability > 0):
            return [(input_ids, attention_mask)] * 2
        return [mask_tokens(input_ids, attention_mask, config.mask_probability, config.mask_token_id) for _ in range(2)]

    def _encode_views(self, views: list, **requested) -> tuple[ModelOutput, torch.Tensor]:
        """(encoder outputs of the first view, [CLS] states (2B, H) of both views). Identical views share one pass;
        masked views share one batch unless the first view's hidden states or attentions are requested."""
        if views[0] is views[1]:
            first = self._encode(*views[0], **requested)
            cls = first.last_hidden_state[:, 0]  # (B, H)
            return first, torch.cat([cls, cls])
        if not any(requested.values()):
            both = self._encode(torch.cat([v[0] for v in views]), torch.cat([v[1] for v in views]))
            return both, both.last_hidden_state[:, 0]  # (2B, H)
        first = self._encode(*views[0], **requested)
        second = self._encode(*views[1])
        return first, torch.cat([first.last_hidden_state[:, 0], second.last_hidden_state[:, 0]])  # (2B, H)

    # ------------------------------------------------------------------------------------------------ loss
    def _lm_labels(self, lm_input_ids: torch.Tensor, lm_attention_mask: torch.Tensor) -> torch.Tensor:
        labels = lm_input_ids.masked_fill(~lm_attention_mask.bool(), IGNORE_INDEX)
        bos = self.config.text_config.bos_token_id
        if bos is not None:  # the leading BOS is an input, not something to reconstruct
            labels[:, 0] = torch.where(labels[:, 0] == bos, IGNORE_INDEX, labels[:, 0])
        return labels

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        lm_input_ids: torch.LongTensor | None = None,
        lm_attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        num_items_in_batch: torch.Tensor | int | None = None,
        return_loss: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ) -> PFormerOutput:
        r"""
        input_ids / attention_mask: (B, T) the sentence in the encoder's tokenizer (first token = [CLS]/BOS).
        lm_input_ids / lm_attention_mask: (B, T') the sentence in the LM's tokenizer (default: the same ids).
        labels: (B, T') LM targets aligned with `lm_input_ids` (-100 ignored); default: the LM ids without padding
            and without the leading BOS. `num_items_in_batch` (their count over the accumulated batch) normalises
            the LM loss as transformers' Trainer expects.
        return_loss: accepted for trainer compatibility; the self-contrastive term is always computed locally.
        output_hidden_states / output_attentions: return the encoder's, for the first view (default: the config's).
        return_dict=False gives a tuple of the non-None output fields.

        In training mode the encoder input is masked (`config.mask_probability`) twice, giving the two views of the
        contrastive term; the first view predicts the prompts. In eval mode both views are the unmasked sentence.
        """
        config = self.config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if lm_input_ids is None:
            lm_input_ids, lm_attention_mask = input_ids, attention_mask
        elif lm_attention_mask is None:
            lm_attention_mask = torch.ones_like(lm_input_ids)
        if labels is None:
            labels = self._lm_labels(lm_input_ids, lm_attention_mask)

        # Two views of each sentence through the encoder.
        batch = input_ids.shape[0]
        encoded, cls = self._encode_views(
            self._views(input_ids, attention_mask), **self._requested(output_hidden_states, output_attentions)
        )  # cls: (2B, H)

        # Self-contrastive term on the [CLS] projections.
        temperature = self.temperature()
        embeds = F.normalize(self.contrastive_projection(cls), dim=-1)  # (2B, C)
        contrastive_loss = self_contrastive_loss(
            embeds[:batch], embeds[batch:], temperature, config.contrastive_label_smoothing
        )

        # Prompts prefixed to the frozen LM, which reconstructs the sentence.
        prompts = self.prompt_head(cls[:batch])  # (B, n, D_lm): from the first view
        embedding = self.language_model.get_input_embeddings()
        text_embeds = embedding(lm_input_ids)  # (B, T', D_lm)
        inputs_embeds = torch.cat([prompts.to(text_embeds.dtype), text_embeds], dim=1)  # (B, n + T', D_lm)
        prompt_mask = torch.ones(batch, config.num_prompts, dtype=lm_attention_mask.dtype, device=lm_attention_mask.device)
        lm_out = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=torch.cat([prompt_mask, lm_attention_mask], 1),
            output_hidden_states=False,
            output_attentions=False,
            return_dict=True,
        )
        full_labels = torch.cat([torch.full_like(prompt_mask, IGNORE_INDEX, dtype=labels.dtype), labels.to(prompt_mask.device)], 1)
        lm_loss = ForCausalLMLoss(
            lm_out.logits, full_labels, vocab_size=lm_out.logits.shape[-1], num_items_in_batch=num_items_in_batch
        )

        word_embedding_loss = nearest_word_embedding_loss(prompts, embedding.weight)
        loss = (
            config.lm_loss_weight * lm_loss
            + config.contrastive_loss_weight * contrastive_loss
            + config.word_embedding_loss_weight * word_embedding_loss
        )
        return PFormerOutput(
            loss=loss,
            lm_loss=lm_loss,
            contrastive_loss=contrastive_loss,
            word_embedding_loss=word_embedding_loss,
            prompts=prompts,
            text_embeds=embeds[:batch],
            logits=lm_out.logits,
            temperature=temperature.detach(),
            hidden_states=encoded.hidden_states,
            attentions=encoded.attentions,
        )


__all__ = ["PFormerModel", "PFormerOutput", "PFormerPreTrainedModel"]
