"""LoRA fine-tuning of CosMo (examples/finetune_lora.py): where the adapters go, what trains, save/load/merge."""

import pytest
import torch

peft = pytest.importorskip("peft")

from cosmo_vl.modeling import CosmoForConditionalGeneration  # noqa: E402
from cosmo_vl.presets import get_config, get_processor  # noqa: E402
from cosmo_vl.processing import VLCollator, load_any  # noqa: E402

from script_loading import load_script  # noqa: E402


ft = load_script("examples/finetune_lora.py", "finetune_lora")


def _lora_args(**overrides):
    args = ft.LoraScriptArguments(lora_dropout=0.0)
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def _base(seed=0):
    torch.manual_seed(seed)
    model = CosmoForConditionalGeneration(get_config("cosmo-tiny"))
    # Open the gates so the visual path (and any accidental change to it) shows in the logits.
    for name, param in model.named_parameters():
        if name.endswith(("attn_gate", "ff_gate")):
            param.data.fill_(0.5)
    return model


@pytest.fixture(scope="module")
def processor():
    return get_processor("cosmo-tiny")


@pytest.fixture(scope="module")
def dataset():
    return load_any("shapes-captions")["train"].select(range(16))


@pytest.fixture(scope="module")
def batch(processor, dataset):
    collator = VLCollator(processor, max_length=32, truncation=True)
    return collator([dataset[i] for i in range(4)])


def _logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}, return_loss=False).logits


@pytest.fixture(scope="module")
def trained(tmp_path_factory, processor, dataset):
    """A base saved to disk, and a LoRA model trained a few steps on it with CosmoTrainer."""
    from cosmo_vl.trainers import CosmoTrainer, CosmoTrainingArguments

    root = tmp_path_factory.mktemp("lora")
    base = _base()
    base.save_pretrained(root / "base")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = ft.add_lora(base, _lora_args(), gradient_checkpointing=True)
    lora_init = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    training_args = CosmoTrainingArguments(
        output_dir=str(root / "run"), max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3,
        report_to=[], save_strategy="no", remove_unused_columns=False, dataloader_num_workers=0, seed=0,
        use_cpu=True, disable_tqdm=True,
    )
    trainer = CosmoTrainer(
        model=model, args=training_args, train_dataset=dataset,
        data_collator=VLCollator(processor, max_length=32, truncation=True), processing_class=processor,
    )
    trainer.train()
    return {"root": root, "model": model, "before": before, "lora_init": lora_init}


def test_lora_modules_only_in_language_model():
    model = ft.add_lora(_base(), _lora_args(), gradient_checkpointing=False)
    lora_modules = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]
    assert lora_modules, "no LoRA module was created"
    num_layers = get_config("cosmo-tiny").text_config.num_hidden_layers
    assert len(lora_modules) == 2 * num_layers  # q_proj and v_proj of every decoder layer
    for name in lora_modules:
        assert ".model.language_model." in name and ".layer.self_attn." in name, name
        assert not any(part in name for part in ("vision_model", "resampler", "cross_attention")), name
    for prefix in ("vision_model", "resampler"):
        sub = model.base_model.model.model.get_submodule(prefix)
        assert not any("lora_" in n for n, _ in sub.named_parameters())


def test_target_regex_outside_lm_is_rejected():
    with pytest.raises(ValueError, match="LM projections only"):
        ft.check_lora_targets(_base(), r".*\.(q_proj|v_proj)")  # would hit the vision tower too


def test_only_lora_parameters_trainable():
    model = ft.add_lora(_base(), _lora_args(), gradient_checkpointing=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable), trainable[:5]


def test_training_changes_only_adapter_weights(trained):
    state = trained["model"].state_dict()
    changed = []
    for key, value in state.items():
        if "lora_" in key:
            continue
        base_key = key.replace("base_model.model.", "", 1).replace(".base_layer", "")
        assert torch.equal(value, trained["before"][base_key]), f"frozen weight {key} changed"
    for key, value in trained["lora_init"].items():
        if not torch.equal(state[key], value):
            changed.append(key)
    assert any("lora_B" in k for k in changed), "training did not update the adapters"


def test_adapter_save_load_identical_logits(trained, batch):
    from peft import PeftModel

    model, root = trained["model"], trained["root"]
    model.save_pretrained(root / "adapter")
    files = {p.name for p in (root / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "model.safetensors" not in files  # the adapter only
    reference = _logits(model, batch)
    fresh = CosmoForConditionalGeneration.from_pretrained(root / "base")
    loaded = PeftModel.from_pretrained(fresh, root / "adapter")
    torch.testing.assert_close(_logits(loaded, batch), reference, rtol=0, atol=0)
    # The adapter matters: the bare base gives different logits.
    bare = CosmoForConditionalGeneration.from_pretrained(root / "base")
    assert not torch.allclose(_logits(bare, batch), reference)


def test_merge_and_unload_matches_adapter(trained, batch):
    from peft import PeftModel

    root = trained["root"]
    trained["model"].save_pretrained(root / "adapter_merge")
    loaded = PeftModel.from_pretrained(CosmoForConditionalGeneration.from_pretrained(root / "base"), root / "adapter_merge")
    reference = _logits(loaded, batch)
    merged = loaded.merge_and_unload()
    assert isinstance(merged, CosmoForConditionalGeneration)
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(_logits(merged, batch), reference, rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_same_loss(batch):
    results = []
    for checkpointing in (False, True):
        model = ft.add_lora(_base(), _lora_args(), gradient_checkpointing=checkpointing)
        for name, param in model.named_parameters():  # non-zero B so the adapters take part in the gradient
            if "lora_B" in name:
                torch.manual_seed(1)
                param.data.normal_(std=0.02)
        model.train()
        inner = model.base_model.model
        flag = getattr(inner, "is_activation_checkpointing", None)
        assert (inner.is_gradient_checkpointing if flag is None else flag) == checkpointing
        out = model(**batch)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((out.loss.detach(), grads))
    (loss_off, grads_off), (loss_on, grads_on) = results
    torch.testing.assert_close(loss_on, loss_off, rtol=0, atol=1e-6)
    for name in grads_off:
        torch.testing.assert_close(grads_on[name], grads_off[name], rtol=1e-4, atol=1e-6)


def test_qlora_quantises_only_the_lm_layers(tmp_path):
    bnb = pytest.importorskip("bitsandbytes")
    _base().save_pretrained(tmp_path / "base")
    args = _lora_args(model=str(tmp_path / "base"), qlora=True)
    try:
        model, _, _ = ft.load_base(args, str(tmp_path))
    except RuntimeError as err:  # bitsandbytes present but no backend for this device: the message says so
        assert "--qlora" in str(err)
        pytest.skip(str(err))
    quantised = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantised and all(".layer." in n and "language_model" in n for n in quantised), quantised[:4]
    peft_model = ft.add_lora(model, args, gradient_checkpointing=False)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
