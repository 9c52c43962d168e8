"""SimVLG against transformers' own generic model, generation, config and pipeline tests (installed version)."""

import unittest
from unittest import mock

from transformers.models.auto import modeling_auto
from transformers_suite import TinyVlmTester, load_tree, stale_mixin_patches, start_class_patches  # noqa: I001

REAL_MIXINS = load_tree()

from tests.generation.test_utils import GenerationTesterMixin  # noqa: E402
from tests.test_configuration_common import ConfigTester  # noqa: E402
from tests.test_modeling_common import ModelTesterMixin  # noqa: E402
from tests.test_pipeline_mixin import PipelineTesterMixin  # noqa: E402

from cosmo_vl.modeling import SimVlgConfig, SimVlgForConditionalGeneration, SimVlgModel  # noqa: E402


class SimVlgModelTester(TinyVlmTester):
    """Tiny SimVLG: CLIP vision tower (4 patches + CLS), a 2-layer connector merging 1 token per layer, Llama LM.

    The prompt holds one `<visual>` token per visual token of its image (K = 5 - 1 - 1 = 3), as transformers' own
    VLM testers lay out image tokens: the generic tests take one input position for one LM position (the cache
    length is the input length). Prompts with one placeholder per image are tested in test_generation_simvlg.py.
    """

    num_placeholders = 3  # K: the visual tokens of one image

    def get_config(self):
        return SimVlgConfig(
            vision_config=self.vision_config, text_config=self.text_config, connector_hidden_size=16,
            connector_num_layers=2, connector_num_heads=2, connector_intermediate_size=24, merge_r=1,
            media_token_id=self.media_token_id, endofchunk_token_id=self.endofchunk_token_id,
            freeze_vision_tower=False, freeze_language_model=False,
        )


class SimVlgModelTest(ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (SimVlgModel, SimVlgForConditionalGeneration)
    pipeline_model_mapping = {"image-text-to-text": SimVlgForConditionalGeneration}
    _is_composite = True
    # Llava xfails the gradient-checkpointing tests for this: the CLIP tower's post_layernorm serves its pooled
    # output only, which a VLM reading the patch tokens never uses. Gradient equality still runs.
    test_all_params_have_gradient = False

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        patches = [*stale_mixin_patches(),
                   # The Auto classes of `simvlg` (registered at import), listed where transformers lists its own:
                   # the mixin gives labels to, and trains, the classes with a head only.
                   mock.patch.dict(modeling_auto.MODEL_MAPPING_NAMES, {"simvlg": "SimVlgModel"}),
                   mock.patch.dict(modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
                                   {"simvlg": "SimVlgForConditionalGeneration"})]
        start_class_patches(cls, patches)

    def setUp(self):
        self.model_tester = SimVlgModelTester(self)
        self.config_tester = ConfigTester(self, config_class=SimVlgConfig, has_text_modality=False,
                                          common_properties=["media_token_id", "merge_r"])

    def test_config(self):
        self.config_tester.run_common_tests()
