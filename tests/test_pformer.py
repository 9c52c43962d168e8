"""P-Former: losses against naive references, frozen LM, Auto classes, preset and remote-code round trip."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from tiny_configs import VOCAB, tiny_pformer_config
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import cosmo_vl
from cosmo_vl.modeling import PFormerConfig, PFormerModel
from cosmo_vl.modeling.modeling_pformer import mask_tokens, nearest_word_embedding_loss
from cosmo_vl.presets import get_config


def _batch(b=4, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (b, t), generator=g)
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    return ids.masked_fill(~mask.bool(), 0), mask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PFormerModel(tiny_pformer_config())


def test_defaults_and_shapes(model):
    default = PFormerConfig()
    assert default.num_prompts == 32 and default.contrastive_dim == 256 and default.mask_probability == 0.25
    assert default.encoder_config.model_type == "bert" and default.prompt_hidden_size == 768
    assert default.temperature_init == 0.07 and default.contrastive_label_smoothing == 0.1
    ids, mask = _batch()
    prompts = model.get_prompts(ids, mask)
    assert prompts.shape == (4, 4, 24)
    assert model.temperature().item() == pytest.approx(0.07)
    assert model.encoder.pooler is None  # unused pooler not built (no unused parameters under DDP)


def test_losses_match_naive_reference_in_eval(model):
    """Eval mode: no masking, so each component can be recomputed by hand from the parts."""
    model.eval()
    ids, mask = _batch()
    with torch.no_grad():
        out = model(ids, mask)
        cls = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        prompts = model.prompt_head(cls)
        torch.testing.assert_close(out.prompts, prompts)
        # prompt head: Linear -> (n, d) -> Linear + Tanh -> Linear
        head = model.prompt_head
        grid = head.expand(cls).view(4, 4, -1)
        torch.testing.assert_close(head.out(torch.tanh(head.dense(grid))), prompts)
        # LM reconstruction: frozen LM on [prompts; sentence], predicting the sentence tokens after BOS.
        embeds = torch.cat([prompts, model.language_model.get_input_embeddings()(ids)], 1)
        logits = model.language_model(inputs_embeds=embeds, attention_mask=torch.cat([torch.ones(4, 4, dtype=mask.dtype), mask], 1)).logits
        terms = []
        for b in range(4):
            for t in range(1, 7):
                if mask[b, t]:
                    terms.append(-F.log_softmax(logits[b, 4 + t - 1], -1)[ids[b, t]])
        torch.testing.assert_close(out.lm_loss, torch.stack(terms).mean())
        # self-contrastive, two identical views, smoothing 0.1
        z = F.normalize(model.contrastive_projection(cls), dim=-1)
        sim = z @ z.t() / 0.07
        n = 4
        ref = 0.0
        for row in (sim, sim.t()):
            logp = F.log_softmax(row, -1)
            target = torch.full((n, n), 0.1 / n) + 0.9 * torch.eye(n)
            ref += -(logp * target).sum(-1).mean() / 2
        torch.testing.assert_close(out.contrastive_loss, ref)
        # nearest word embedding, by brute force
        table = model.language_model.get_input_embeddings().weight
        flat = prompts.reshape(-1, 24)
        nearest = torch.stack([table[((table - p) ** 2).sum(-1).argmin()] for p in flat])
        torch.testing.assert_close(out.word_embedding_loss, ((flat - nearest) ** 2).mean())
        torch.testing.assert_close(out.loss, out.lm_loss + out.contrastive_loss + out.word_embedding_loss)
    model.train()


def test_training_gradients_reach_encoder_and_head_only(model):
    model.train()
    assert not model.language_model.training  # frozen LM runs without dropout
    model.zero_grad()
    ids, mask = _batch(seed=1)
    out = model(ids, mask)
    for name in ("lm_loss", "contrastive_loss", "word_embedding_loss"):
        assert torch.isfinite(out[name])
    out.loss.backward()
    assert all(p.grad is None for p in model.language_model.parameters())
    for name, p in model.named_parameters():
        if not name.startswith("language_model."):
            assert p.grad is not None, name
    # the word-embedding term gives no gradient to the (stop-grad) embedding table
    table = model.language_model.get_input_embeddings().weight
    table.requires_grad_(True)
    try:
        prompts = torch.randn(2, 3, 24, requires_grad=True)
        nearest_word_embedding_loss(prompts, table).backward()
        assert table.grad is None and prompts.grad is not None
    finally:
        table.requires_grad_(False)


def test_masking():
    ids, mask = _batch(b=64, t=20)
    g = torch.Generator().manual_seed(0)
    new_ids, new_mask = mask_tokens(ids, mask, 0.25, None, g)
    assert torch.equal(new_ids, ids) and (new_mask[:, 0] == 1).all() and (new_mask <= mask).all()
    dropped = (mask.bool() & ~new_mask.bool())[:, 1:].float().sum() / mask[:, 1:].sum()
    assert 0.2 < dropped < 0.3
    with_token, same_mask = mask_tokens(ids, mask, 0.25, 3, g)
    assert torch.equal(same_mask, mask) and (with_token[:, 0] == 1).all()
    assert ((with_token == 3) & ~mask.bool()).sum() == 0


def test_num_items_in_batch_and_separate_lm_tokens(model):
    model.eval()
    ids, mask = _batch()
    with torch.no_grad():
        mean = model(ids, mask).lm_loss
        labels = model._lm_labels(ids, mask)
        count = int((labels[:, 1:] != -100).sum())
        summed = model(ids, mask, num_items_in_batch=torch.tensor(2 * count)).lm_loss
        torch.testing.assert_close(summed, mean / 2)
        lm_ids = torch.randint(5, VOCAB, (4, 5))
        assert model(ids, mask, lm_input_ids=lm_ids).logits.shape == (4, 4 + 5, VOCAB)
    model.train()


def test_auto_classes_and_preset(model, tmp_path):
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, PFormerConfig) and config.num_prompts == 4
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, PFormerModel)
    ids, mask = _batch()
    model.eval()
    torch.testing.assert_close(loaded.get_prompts(ids, mask), model.get_prompts(ids, mask))
    model.train()
    preset = get_config("pformer-tiny")
    assert preset.model_type == "pformer" and preset.encoder_config.vocab_size == preset.text_config.vocab_size == 2048


def test_from_backbones(tmp_path):
    cfg = tiny_pformer_config()
    AutoModel.from_config(cfg.encoder_config).save_pretrained(tmp_path / "enc")
    AutoModelForCausalLM.from_config(cfg.text_config).save_pretrained(tmp_path / "lm")
    model = PFormerModel.from_backbones(str(tmp_path / "enc"), str(tmp_path / "lm"), num_prompts=3, contrastive_dim=8)
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    torch.testing.assert_close(model.language_model.lm_head.weight, lm.lm_head.weight)
    assert model.get_prompts(*_batch()).shape == (4, 3, 24)


def test_remote_code_round_trip_without_the_package(model, tmp_path):
    cosmo_vl.enable_remote_code(model)
    try:
        model.save_pretrained(tmp_path)
    finally:
        type(model)._auto_class = None
        type(model.config)._auto_class = None
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map == {"AutoConfig": "configuration_pformer.PFormerConfig", "AutoModel": "modeling_pformer.PFormerModel"}
    copied = sorted(p.name for p in tmp_path.glob("*.py"))
    assert {"configuration_pformer.py", "modeling_pformer.py", "vlp_objectives.py"} <= set(copied)
    for source in tmp_path.glob("*.py"):
        assert "cosmo_vl" not in source.read_text(), f"{source.name} imports the package"
    ids, mask = _batch()
    model.eval()
    with torch.no_grad():
        expected = model.get_prompts(ids, mask)
        expected_loss = model(ids, mask).loss
    model.train()
    torch.save({"ids": ids, "mask": mask}, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["cosmo_vl"] = None
        import torch
        from transformers import AutoModel
        batch = torch.load({str(tmp_path / "inputs.pt")!r})
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "PFormerModel" and type(model).__module__.startswith("transformers_modules")
        with torch.no_grad():
            torch.save({{"prompts": model.get_prompts(batch["ids"], batch["mask"]),
                         "loss": model(batch["ids"], batch["mask"]).loss}}, {str(tmp_path / "outputs.pt")!r})
        """
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = torch.load(tmp_path / "outputs.pt")
    torch.testing.assert_close(outputs["prompts"], expected)
    torch.testing.assert_close(outputs["loss"], expected_loss)
