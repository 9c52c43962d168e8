"""SimVLG generation, every decoding mode, against a naive step-by-step reference written here: the whole sequence
through `forward` at every step (no cache), the next token chosen from the last position's logits.

Prompts hold one `<visual>` placeholder per image, as the processor writes them, left-padded, with a different
number of images per sample."""

import pytest
import torch
import torch.nn.functional as F
from transformers.generation import utils as generation_utils
from transformers.generation.configuration_utils import CompileConfig, GenerationMode

from cosmo_vl.modeling import SimVlgConfig, SimVlgForConditionalGeneration
from cosmo_vl.modeling.compat import cache_kwargs, output_cache

MEDIA, PAD, VOCAB = 3, 0, 99


def _model(num_lm_layers: int = 2, seed: int = 0) -> SimVlgForConditionalGeneration:
    """Tiny SimVLG: CLIP tower (4 patches + CLS), connector merging 1 token per layer (K = 3), Llama LM."""
    config = SimVlgConfig(
        vision_config={"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 8, "patch_size": 4},
        text_config={"model_type": "llama", "vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": num_lm_layers, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "max_position_embeddings": 64, "pad_token_id": PAD, "bos_token_id": 1, "eos_token_id": 2},
        connector_hidden_size=16, connector_num_layers=2, connector_num_heads=2, connector_intermediate_size=24,
        merge_r=1, media_token_id=MEDIA, endofchunk_token_id=4,
    )
    torch.manual_seed(seed)
    model = SimVlgForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None  # fixed lengths: every step is compared
    model.generation_config.pad_token_id = PAD
    return model


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def batch():
    """Sample 0: two images; sample 1: one image (its second media slot is padding), left-padded."""
    input_ids = torch.tensor([[1, MEDIA, 17, 18, MEDIA, 19, 20], [PAD, PAD, PAD, 1, MEDIA, 21, 22]])
    attention_mask = (input_ids != PAD).long()
    torch.manual_seed(1)
    pixel_values = torch.randn(2, 2, 3, 8, 8)  # (B, M, C, H, W)
    media_mask = torch.tensor([[True, True], [True, False]])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
            "media_mask": media_mask}


def _last_logits(model, ids, mask, batch, repeat: int = 1) -> torch.Tensor:
    """Logits of the next token: the whole sequence through forward, no cache. (B, V)"""
    media = {k: batch[k].repeat_interleave(repeat, dim=0) for k in ("pixel_values", "media_mask")}
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, use_cache=False, **media).logits[:, -1].float()


def _grow(ids, mask, tokens):
    return torch.cat([ids, tokens[:, None]], dim=1), torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)


def naive_greedy(model, batch, steps: int) -> torch.Tensor:
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(steps):
        ids, mask = _grow(ids, mask, _last_logits(model, ids, mask, batch).argmax(-1))
    return ids


def naive_sample(model, batch, steps: int, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    for _ in range(steps):
        probs = _last_logits(model, ids, mask, batch).softmax(-1)
        ids, mask = _grow(ids, mask, torch.multinomial(probs, 1)[:, 0])
    return ids


def naive_beam_search(model, batch, steps: int, beams: int) -> torch.Tensor:
    """Keep the `beams` best continuations by total log-probability; return the best one."""
    b = batch["input_ids"].shape[0]
    ids = batch["input_ids"].repeat_interleave(beams, dim=0)
    mask = batch["attention_mask"].repeat_interleave(beams, dim=0)
    scores = torch.full((b, beams), -float("inf"))
    scores[:, 0] = 0.0  # the beams start as copies: only one of them is a candidate at first
    rows = torch.arange(b)[:, None]
    for _ in range(steps):
        logp = F.log_softmax(_last_logits(model, ids, mask, batch, repeat=beams), dim=-1)  # (B*beams, V)
        total = (scores.reshape(-1, 1) + logp).reshape(b, -1)  # (B, beams*V)
        scores, flat = total.topk(beams, dim=-1)
        beam, token = flat // VOCAB, flat % VOCAB
        ids = ids.reshape(b, beams, -1)[rows, beam].reshape(b * beams, -1)
        mask = mask.reshape(b, beams, -1)[rows, beam].reshape(b * beams, -1)
        ids, mask = _grow(ids, mask, token.reshape(-1))
    best = scores.argmax(-1)
    return ids.reshape(b, beams, -1)[torch.arange(b), best]


def _generate(model, batch, **kwargs):
    with torch.no_grad():
        return model.generate(**batch, **kwargs)


def test_greedy(model, batch):
    assert torch.equal(_generate(model, batch, max_new_tokens=5, do_sample=False), naive_greedy(model, batch, 5))
    uncached = _generate(model, batch, max_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(uncached, naive_greedy(model, batch, 5))


def test_media_encoded_once(model, batch):
    calls = []
    handle = model.model.vision_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        _generate(model, batch, max_new_tokens=3, do_sample=False)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_sampling_seeded(model, batch):
    torch.manual_seed(7)
    got = _generate(model, batch, max_new_tokens=5, do_sample=True, top_k=0, top_p=1.0, temperature=1.0)
    assert torch.equal(got, naive_sample(model, batch, 5, seed=7))


def test_beam_search(model, batch):
    got = _generate(model, batch, max_new_tokens=4, num_beams=3, do_sample=False, length_penalty=1.0)
    assert torch.equal(got, naive_beam_search(model, batch, 4, beams=3))


def test_beam_sampling_cached_matches_uncached_and_the_expanded_layout(model, batch):
    """Beam sampling draws from transformers' own beam bookkeeping: the cached run, the run that recomputes the
    whole sequence each step, and the run from a prompt already holding K `<visual>` tokens per image agree."""
    kwargs = dict(max_new_tokens=4, num_beams=2, do_sample=True, top_k=0, num_return_sequences=2)
    torch.manual_seed(3)
    cached = _generate(model, batch, **kwargs)
    torch.manual_seed(3)
    uncached = _generate(model, batch, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)
    visual = model.encode_media(batch["pixel_values"], batch["media_mask"])
    ids, mask, _ = model.model.expand_media_tokens(batch["input_ids"], batch["attention_mask"], None, visual)
    torch.manual_seed(3)
    expanded = _generate(model, {**batch, "input_ids": ids, "attention_mask": mask}, **kwargs)
    t = batch["input_ids"].shape[1]
    assert torch.equal(cached[:, :t], batch["input_ids"].repeat_interleave(2, dim=0))
    assert torch.equal(cached[:, t:], expanded[:, ids.shape[1]:])


def test_assisted_decoding_with_a_smaller_simvlg(model, batch):
    assistant = _model(num_lm_layers=1, seed=5)
    single = {k: v[1:] for k, v in batch.items()}  # assisted decoding takes one prompt at a time
    single["input_ids"], single["attention_mask"] = single["input_ids"][:, 3:], single["attention_mask"][:, 3:]
    single["pixel_values"], single["media_mask"] = single["pixel_values"][:, :1], single["media_mask"][:, :1]
    got = _generate(model, single, max_new_tokens=6, do_sample=False, assistant_model=assistant)
    assert torch.equal(got, naive_greedy(model, single, 6))


def test_contrastive_search(model, batch):
    method = getattr(generation_utils, "GENERATION_MODES_MAPPING", {}).get(GenerationMode.CONTRASTIVE_SEARCH, "")
    if not method.startswith("_"):
        pytest.skip(f"this transformers release runs contrastive search only as Hub custom code ({method}), "
                    "not natively")
    kwargs = dict(max_new_tokens=4, penalty_alpha=0.6, top_k=4)
    assert torch.equal(_generate(model, batch, **kwargs), _generate(model, batch, use_cache=False, **kwargs))


def test_logits_to_keep(model, batch):
    with torch.no_grad():
        full = model(**batch).logits
        last = model(**batch, logits_to_keep=1).logits
    assert last.shape[1] == 1
    torch.testing.assert_close(last, full[:, -1:])


def test_continue_from_the_returned_cache(model, batch):
    first = _generate(model, batch, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    mask = torch.cat([batch["attention_mask"], torch.ones(2, 3, dtype=torch.long)], dim=1)
    cache = cache_kwargs(output_cache(first))
    resumed = _generate(model, {**batch, "input_ids": first.sequences, "attention_mask": mask},
                        max_new_tokens=3, do_sample=False, **cache)
    assert torch.equal(resumed, naive_greedy(model, batch, 6))


def test_inputs_embeds_with_media(model, batch):
    embeds = model.get_input_embeddings()(batch["input_ids"])
    inputs = {k: v for k, v in batch.items() if k != "input_ids"}
    got = _generate(model, {**inputs, "inputs_embeds": embeds}, max_new_tokens=4, do_sample=False)
    t = batch["input_ids"].shape[1]
    assert torch.equal(got, naive_greedy(model, batch, 4)[:, t:])  # from embeddings: the new tokens only
    with torch.no_grad():  # forward puts the visual tokens where the placeholder embeddings are
        torch.testing.assert_close(model(**inputs, inputs_embeds=embeds).logits, model(**batch).logits)


def _compile_available() -> str | None:
    try:
        torch.compile(lambda x: x + 1, backend="inductor")(torch.ones(1))
    except Exception as error:  # noqa: BLE001 - any failure means no compiler on this machine
        return f"torch.compile is unavailable on this CPU: {type(error).__name__}"
    return None


def test_static_cache_and_compiled_decoding(model, batch):
    """transformers compiles the decoding step of a static cache (as for Llama); on CPU only when asked."""
    why = _compile_available()
    if why:
        pytest.skip(why)
    single = {k: v[:1] for k, v in batch.items()}
    static = _generate(model, single, max_new_tokens=3, do_sample=False, cache_implementation="static")
    assert torch.equal(static, naive_greedy(model, single, 3))
    compile_config = CompileConfig(fullgraph=False, dynamic=False)
    compile_config._compile_all_devices = True
    torch._dynamo.reset()
    compiled = _generate(model, single, max_new_tokens=3, do_sample=False, cache_implementation="static",
                         compile_config=compile_config)
    assert torch.equal(compiled, naive_greedy(model, single, 3))
