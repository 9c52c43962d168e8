"""CosMo generation against a naive reference: a full forward over the whole sequence per step, no cache."""

import pytest
import torch
from tiny_configs import MEDIA_ID, PAD_ID, tiny_cosmo_config, tiny_text

from cosmo_vl.modeling import CosmoForConditionalGeneration
from cosmo_vl.modeling.compat import CACHE_NAME

NEW_TOKENS = 4


def _model(num_layers: int = 4, seed: int = 0) -> CosmoForConditionalGeneration:
    torch.manual_seed(seed)
    config = tiny_cosmo_config(text_config=tiny_text("llama", num_layers=num_layers, tie=False),
                               unimodal_depth=num_layers // 2,
                               cross_attention_gate_init=1.0)  # open gates: the media steer the text
    model = CosmoForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = None  # always NEW_TOKENS tokens
    model.generation_config.pad_token_id = PAD_ID
    return model


def _prompts():
    """Two prompts, LEFT padded: sample 0 interleaves two images, sample 1 holds one (its second media slot padded)."""
    rows = [[1, MEDIA_ID, 11, 12, MEDIA_ID, 13, 14], [1, MEDIA_ID, 21, 22]]
    length = max(len(r) for r in rows)
    ids = torch.tensor([[PAD_ID] * (length - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (length - len(r)) + [1] * len(r) for r in rows])
    torch.manual_seed(1)
    pixels = torch.randn(2, 2, 1, 3, 16, 16)  # (B, M, F, C, H, W)
    media_mask = torch.tensor([[True, True], [True, False]])
    return rows, ids, mask, pixels, media_mask


def _reference_greedy(model, row: list[int], pixels: torch.Tensor, num_media: int, steps: int) -> list[int]:
    """One sample alone, no padding: each step runs the whole sequence (no cache) and takes the argmax."""
    tokens = list(row)
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.tensor([tokens])
            media = {"pixel_values": pixels[None, :num_media]} if num_media else {}
            logits = model(input_ids=ids, use_cache=False, **media).logits
            tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(row):]


def _generate(model, ids, mask, pixels, media_mask, **kwargs):
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, media_mask=media_mask,
                              max_new_tokens=NEW_TOKENS, **kwargs)


@pytest.fixture(scope="module")
def setup():
    model = _model()
    rows, ids, mask, pixels, media_mask = _prompts()
    expected = [_reference_greedy(model, row, pixels[i], int(media_mask[i].sum()), NEW_TOKENS)
                for i, row in enumerate(rows)]
    return model, ids, mask, pixels, media_mask, expected


def _new(sequences: torch.Tensor, prompt_length: int) -> list[list[int]]:
    return sequences[:, prompt_length:].tolist()


def test_greedy_left_padded_batch_matches_reference(setup):
    model, ids, mask, pixels, media_mask, expected = setup
    assert _new(_generate(model, ids, mask, pixels, media_mask, do_sample=False), ids.shape[1]) == expected
    # The media matter: without them the continuation differs.
    without = [_reference_greedy(model, row, pixels[i], 0, NEW_TOKENS) for i, row in enumerate(_prompts()[0])]
    assert without != expected


def test_static_cache_matches_reference(setup):
    model, ids, mask, pixels, media_mask, expected = setup
    out = _generate(model, ids, mask, pixels, media_mask, do_sample=False, cache_implementation="static")
    assert _new(out, ids.shape[1]) == expected


def test_static_cache_compiled_forward_matches_reference(setup):
    """Static cache + `torch.compile` (graph breaks allowed: CosMo is not full-graph compilable), 2 tokens."""
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is unavailable")
    model, ids, mask, pixels, media_mask, expected = setup
    compiled = _model()
    compiled.forward = torch.compile(compiled.forward, backend="eager")
    with torch.no_grad():
        out = compiled.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, media_mask=media_mask,
                                max_new_tokens=2, do_sample=False, cache_implementation="static")
    assert _new(out, ids.shape[1]) == [e[:2] for e in expected]


def test_inputs_embeds_with_media_matches_reference(setup):
    model, ids, mask, pixels, media_mask, expected = setup
    embeds = model.get_input_embeddings()(ids)
    with torch.no_grad():
        out = model.generate(inputs_embeds=embeds, attention_mask=mask, pixel_values=pixels, media_mask=media_mask,
                             max_new_tokens=NEW_TOKENS, do_sample=False)
    assert out.tolist() == expected  # only the new tokens come back without input_ids


def test_continuing_from_returned_cache_matches_reference(setup):
    model, ids, mask, pixels, media_mask, expected = setup
    with torch.no_grad():
        first = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, media_mask=media_mask,
                               max_new_tokens=2, do_sample=False, return_dict_in_generate=True)
        longer_mask = torch.cat([mask, torch.ones(2, 2, dtype=mask.dtype)], dim=1)
        rest = model.generate(input_ids=first.sequences, attention_mask=longer_mask, pixel_values=pixels,
                              media_mask=media_mask, max_new_tokens=NEW_TOKENS - 2, do_sample=False,
                              **{CACHE_NAME: getattr(first, CACHE_NAME)})
    assert _new(rest, ids.shape[1]) == expected


def test_assisted_decoding_matches_reference(setup):
    model, ids, mask, pixels, media_mask, expected = setup
    assistant = _model(num_layers=2, seed=5)  # a smaller CosMo with the same vocabulary
    row = _prompts()[0][0]  # assisted decoding takes one sample at a time
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([row]), pixel_values=pixels[:1], max_new_tokens=NEW_TOKENS,
                             do_sample=False, assistant_model=assistant)
    assert _new(out, len(row)) == expected[:1]


def test_beam_search_with_cache_matches_without(setup):
    model, ids, mask, pixels, media_mask, expected = setup
    cached = _generate(model, ids, mask, pixels, media_mask, do_sample=False, num_beams=3)
    uncached = _generate(model, ids, mask, pixels, media_mask, do_sample=False, num_beams=3, use_cache=False)
    assert cached.tolist() == uncached.tolist()
    one_beam = _generate(model, ids, mask, pixels, media_mask, do_sample=False, num_beams=1)
    assert _new(one_beam, ids.shape[1]) == expected


def _reference_sample(model, row, pixels, num_media, steps, seed):
    """Plain multinomial sampling from the softmax of the full-forward logits (no top-k / top-p)."""
    torch.manual_seed(seed)
    tokens = list(row)
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.tensor([tokens])
            logits = model(input_ids=ids, pixel_values=pixels[None, :num_media], use_cache=False).logits
            tokens.append(int(torch.multinomial(logits[:, -1].softmax(-1), 1)[0, 0]))
    return tokens[len(row):]


def test_seeded_sampling_matches_reference(setup):
    model, ids, mask, pixels, media_mask, _ = setup
    row = _prompts()[0][1]
    one = torch.tensor([row])
    torch.manual_seed(7)
    with torch.no_grad():
        out = model.generate(input_ids=one, pixel_values=pixels[1:2, :1], max_new_tokens=NEW_TOKENS, do_sample=True,
                             top_k=0, top_p=1.0, temperature=1.0)
    assert _new(out, len(row)) == [_reference_sample(model, row, pixels[1], 1, NEW_TOKENS, seed=7)]


def test_beam_sampling_is_seeded_and_cache_consistent(setup):
    model, ids, mask, pixels, media_mask, _ = setup
    runs = []
    for use_cache in (True, True, False):
        torch.manual_seed(3)
        runs.append(_generate(model, ids, mask, pixels, media_mask, do_sample=True, num_beams=2, use_cache=use_cache))
    assert runs[0].tolist() == runs[1].tolist() == runs[2].tolist()


def test_contrastive_search_is_not_native():
    """transformers 5 moved contrastive search to the Hub (`custom_generate`); nothing runs it offline."""
    from transformers.generation import utils

    assert "contrastive" in str(getattr(utils, "GENERATION_MODES_MAPPING", "contrastive")).lower()
    pytest.skip("contrastive search is a Hub `custom_generate` recipe in transformers 5, not part of the library")


def test_logits_to_keep_matches_full_logits(setup):
    model, ids, mask, pixels, media_mask, _ = setup
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, media_mask=media_mask).logits
        last = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, media_mask=media_mask,
                     logits_to_keep=1).logits
        two = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, media_mask=media_mask,
                    logits_to_keep=torch.tensor([2, 5])).logits
    assert last.shape[1] == 1
    torch.testing.assert_close(last, full[:, -1:])
    torch.testing.assert_close(two, full[:, [2, 5]])
