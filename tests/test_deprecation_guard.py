"""The test suite fails when project code calls a deprecated transformers API (see conftest.py)."""

from pathlib import Path

import pytest
import torch
from conftest import DeprecatedCallFromProject
from transformers import LlamaConfig, LlamaModel
from transformers.utils import logging as hf_logging

from cosmo_vl.modeling.compat import CACHE_NAME

ROOT = Path(__file__).resolve().parent.parent


def run_as_project_code(source: str, **names):
    """Execute `source` as if it were a line of `modeling/`: the guard must attribute calls to the project."""
    exec(compile(source, str(ROOT / "modeling" / "probe.py"), "exec"), names)


def tiny_llama():
    return LlamaModel(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1)).eval()


@pytest.mark.skipif(CACHE_NAME != "cache", reason="the installed transformers predates the `cache` rename")
def test_old_cache_argument_from_project_code_fails():
    with pytest.raises(DeprecatedCallFromProject, match="modeling/probe.py"):
        run_as_project_code("model(input_ids=ids, past_key_values=None)", model=tiny_llama(), ids=torch.ones(1, 3, dtype=torch.long))


def test_current_names_from_project_code_pass():
    out = {}
    run_as_project_code(f"out['y'] = model(input_ids=ids, {CACHE_NAME}=None, use_cache=True)",
                        model=tiny_llama(), ids=torch.ones(1, 3, dtype=torch.long), out=out)
    assert out["y"].last_hidden_state.shape == (1, 3, 16)


@pytest.mark.skipif(CACHE_NAME != "cache", reason="the installed transformers predates the `cache` rename")
def test_deprecated_output_attribute_from_project_code_fails():
    hf_logging.get_logger("transformers.utils.generic").warning_once.cache_clear()
    model, ids = tiny_llama(), torch.ones(1, 3, dtype=torch.long)
    output = model(input_ids=ids, use_cache=True)
    with pytest.raises(DeprecatedCallFromProject, match="modeling/probe.py"):
        run_as_project_code("output.past_key_values", output=output)


def test_deprecation_reached_through_another_library_is_not_ours():
    # The call below comes from this test file, which is not project code: the guard lets the warning through.
    if CACHE_NAME == "cache":
        with pytest.warns(FutureWarning):
            tiny_llama()(input_ids=torch.ones(1, 3, dtype=torch.long), past_key_values=None)
