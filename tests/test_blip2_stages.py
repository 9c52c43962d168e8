"""BLIP-2 stage losses on tiny in-memory Blip2 configs: values vs naive references, masks, gradient routing."""

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    BertConfig,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    LlamaConfig,
)

import cosmo_vl.trainers.blip2_stages as stages
from cosmo_vl.modeling import PFormerConfig, PFormerModel
from cosmo_vl.trainers.blip2_stages import Blip2StageModel, generation_attention_mask, qformer_contrastive_loss

VOCAB, Q = 96, 4


def _configs():
    vision = Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                               image_size=16, patch_size=8)
    qformer = Blip2QFormerConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                 cross_attention_frequency=1, use_qformer_text_input=True, max_position_embeddings=64)
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    return vision, qformer, text


def _pformer(text):
    encoder = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)
    return PFormerModel(PFormerConfig(encoder_config=encoder, text_config=text, num_prompts=Q, contrastive_dim=8))


def _batch(b=4, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (b, t), generator=g)
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return torch.randn(b, 3, 16, 16, generator=g), ids.masked_fill(~mask.bool(), 0), mask


@pytest.fixture(scope="module")
def stage1():
    torch.manual_seed(0)
    vision, qformer, text = _configs()
    config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=Q,
                         image_text_hidden_size=16)
    return Blip2StageModel(Blip2ForImageTextRetrieval(config), pformer=_pformer(text)).train()


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_stage1_losses_finite_and_gradients_routed(stage1):
    px, ids, mask = _batch()
    out = stage1(px, ids, mask)
    for name in ("contrastive_loss", "itm_loss", "lm_loss", "alignment_loss"):
        assert torch.isfinite(out[name]), name
    assert stage1.loss_weights == {"lm_loss": 1.0, "contrastive_loss": 1.0, "itm_loss": 1.0, "alignment_loss": 10.0}
    torch.testing.assert_close(
        out.loss, out.lm_loss + out.contrastive_loss + out.itm_loss + 10 * out.alignment_loss
    )
    prefixes = lambda names, p: any(n.startswith(p) for n in names)  # noqa: E731
    itc = _grads(stage1, out.contrastive_loss)
    assert prefixes(itc, "blip2.vision_projection") and prefixes(itc, "blip2.text_projection") and "temperature.value" in itc
    assert not prefixes(itc, "blip2.itm_head") and not prefixes(itc, "text_head") and not prefixes(itc, "language_projection")
    itm = _grads(stage1, out.itm_loss)
    assert prefixes(itm, "blip2.itm_head") and prefixes(itm, "blip2.qformer") and prefixes(itm, "blip2.embeddings")
    assert not prefixes(itm, "blip2.vision_projection") and "temperature.value" not in itm
    itg = _grads(stage1, out.lm_loss)
    assert prefixes(itg, "text_head") and prefixes(itg, "blip2.embeddings.word_embeddings") and "blip2.query_tokens" in itg
    assert not prefixes(itg, "blip2.itm_head") and not prefixes(itg, "blip2.text_projection")
    align = _grads(stage1, out.alignment_loss)
    assert prefixes(align, "language_projection") and "blip2.query_tokens" in align
    assert not prefixes(align, "blip2.embeddings") and not prefixes(align, "text_head")
    everything = _grads(stage1, out.loss)
    assert not prefixes(everything, "blip2.vision_model")  # frozen tower
    assert all(p.grad is None for p in stage1.pformer.parameters())  # stop-grad teacher
    assert not any(n.startswith("_pformer") for n in stage1.state_dict())  # not saved with the stage model


def test_itc_matches_naive_max_over_queries():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(3, Q, 8), dim=-1)
    text = F.normalize(torch.randn(3, 8), dim=-1)
    loss, sim_i2t, sim_t2i = qformer_contrastive_loss(image, text, 0.1, label_smoothing=0.1)
    naive = torch.tensor([[max(float(image[i, q] @ text[j]) for q in range(Q)) for j in range(3)] for i in range(3)]) / 0.1
    torch.testing.assert_close(sim_i2t, naive)
    torch.testing.assert_close(sim_t2i, naive.t())
    ref = 0.0
    for logits in (naive, naive.t()):
        target = torch.full((3, 3), 0.1 / 3) + 0.9 * torch.eye(3)
        ref += -(F.log_softmax(logits, -1) * target).sum(-1).mean() / 2
    torch.testing.assert_close(loss, ref)
    # With a gathered global batch (this process = rows 2..3 of 5), the positives sit at offset 2.
    image_all, text_all = F.normalize(torch.randn(5, Q, 8), dim=-1), F.normalize(torch.randn(5, 8), dim=-1)
    local_loss, local_i2t, _ = qformer_contrastive_loss(image_all[2:4], text_all[2:4], 0.1, 0.0, image_all, text_all, 2)
    full_loss, full_i2t, full_t2i = qformer_contrastive_loss(image_all, text_all, 0.1, 0.0)
    torch.testing.assert_close(local_i2t, full_i2t[2:4])
    targets = torch.tensor([2, 3])
    ref = (F.cross_entropy(full_i2t[2:4], targets) + F.cross_entropy(full_t2i[2:4], targets)) / 2
    torch.testing.assert_close(local_loss, ref)


def test_itm_negatives_never_positive(stage1, monkeypatch):
    seen = []
    original = stages.itm_negatives

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(result)
        return result

    monkeypatch.setattr(stages, "itm_negatives", spy)
    px, ids, mask = _batch()
    with torch.no_grad():
        for seed in range(4):
            torch.manual_seed(seed)
            stage1(px, ids, mask)
        stage1(px, ids, mask, image_ids=torch.tensor([0, 0, 1, 2]))  # captions 0 and 1 show the same image
    for neg_images, neg_texts in seen[:-1]:
        assert not (neg_images == torch.arange(4)).any() and not (neg_texts == torch.arange(4)).any()
    neg_images, neg_texts = seen[-1]
    same = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert not same[torch.arange(4), neg_images].any() and not same[torch.arange(4), neg_texts].any()


def test_generation_mask_matches_reference():
    text_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    mask = generation_attention_mask(2, text_mask, torch.float32)[:, 0] == 0  # True = attends
    for b in range(2):
        for i in range(6):
            for j in range(6):
                if i < 2:
                    expected = j < 2  # queries see queries only
                else:
                    ti, tj = i - 2, j - 2
                    expected = j < 2 or (tj <= ti and (bool(text_mask[b, tj]) or tj == ti))
                assert bool(mask[b, i, j]) == expected, (b, i, j)


def test_generation_attention_semantics(stage1):
    """Causal text, text sees the queries (hence the image), queries never see the text."""
    stage1.eval()
    px, ids, mask = _batch()
    with torch.no_grad():
        image_embeds = stage1._image_embeds(px)
        logits, queries = stage1.generation_logits(image_embeds, ids, mask)
        future = ids.clone()
        future[:, 4:] = torch.randint(5, VOCAB, (4, 2))
        logits_f, queries_f = stage1.generation_logits(image_embeds, future, mask)
        torch.testing.assert_close(logits_f[:, :4], logits[:, :4])  # positions before the change are unaffected
        assert not torch.allclose(logits_f[1:, 4:], logits[1:, 4:])
        torch.testing.assert_close(queries_f, queries)  # queries never see text
        torch.testing.assert_close(queries, stage1._queries(image_embeds))
        other_image = stage1._image_embeds(torch.randn_like(px))
        logits_i, _ = stage1.generation_logits(other_image, ids, mask)
        assert not torch.allclose(logits_i[:, 0], logits[:, 0])  # even the first text position sees the image
        # the ITG loss is a plain shifted cross-entropy over the non-padding text
        out = stage1(px, ids, mask)
        logits_ref, _ = stage1.generation_logits(image_embeds, ids, mask)
        labels = ids.masked_fill(~mask.bool(), -100)
        ref = F.cross_entropy(logits_ref[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
        torch.testing.assert_close(out.lm_loss, ref)
    stage1.train()


def test_stage2_from_stage1(stage1):
    torch.manual_seed(1)
    _, _, text = _configs()
    lm = AutoModelForCausalLM.from_config(text)
    stage2 = stage1.to_stage2(lm, image_token_index=4).train()
    assert isinstance(stage2.blip2, Blip2ForConditionalGeneration) and stage2.stage == 2
    assert stage2.loss_weights["alignment_loss"] == 100.0
    torch.testing.assert_close(stage2.blip2.query_tokens, stage1.blip2.query_tokens)
    torch.testing.assert_close(stage2.blip2.language_projection.weight, stage1.language_projection.weight)
    torch.testing.assert_close(
        stage2.blip2.qformer.encoder.layer[0].crossattention.attention.query.weight,
        stage1.blip2.qformer.encoder.layer[0].crossattention.attention.query.weight,
    )
    px, ids, mask = _batch()
    out = stage2(px, ids, mask)
    assert torch.isfinite(out.lm_loss) and torch.isfinite(out.alignment_loss)
    torch.testing.assert_close(out.loss, out.lm_loss + 100 * out.alignment_loss)
    # naive reference of the generative loss: the LM on [projected queries; caption]
    with torch.no_grad():
        prefix = stage2.blip2.language_projection(stage2._queries(stage2._image_embeds(px)))
        embeds = torch.cat([prefix, lm.get_input_embeddings()(ids)], 1)
        logits = lm(inputs_embeds=embeds, attention_mask=torch.cat([torch.ones(4, Q, dtype=mask.dtype), mask], 1)).logits
        labels = torch.cat([torch.full((4, Q), -100), ids.masked_fill(~mask.bool(), -100)], 1)
        ref = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.lm_loss, ref)
    grads = _grads(stage2, out.loss)
    assert any(n.startswith("blip2.qformer") for n in grads) and "blip2.query_tokens" in grads
    assert any(n.startswith("blip2.language_projection") for n in grads)
    assert not any(n.startswith(("blip2.language_model", "blip2.vision_model")) for n in grads)
    assert not stage2.blip2.language_model.training


def test_stage2_without_pformer_and_save(tmp_path):
    torch.manual_seed(2)
    vision, qformer, text = _configs()
    qformer.use_qformer_text_input = False
    config = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=Q,
                         image_token_index=4)
    model = Blip2StageModel(Blip2ForConditionalGeneration(config))
    px, ids, mask = _batch()
    out = model(px, ids, mask)
    assert out.alignment_loss is None and torch.equal(out.loss, out.lm_loss)
    model.save_pretrained(tmp_path)
    loaded = Blip2ForConditionalGeneration.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.query_tokens, model.blip2.query_tokens)
    with pytest.raises(ValueError, match="image_token_index"):
        config.image_token_index = None
        Blip2StageModel(Blip2ForConditionalGeneration(config))
