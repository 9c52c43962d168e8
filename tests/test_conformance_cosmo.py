"""CosMo against transformers' own generic model, generation, config and pipeline tests (installed version)."""

import unittest
from unittest import mock

import pytest
import torch
from transformers_suite import (  # noqa: F401, I001
    TinyVlmTester,
    load_tree,
    require_repository_mixins,
    stale_mixin_patches,
    start_class_patches,
)

REAL_MIXINS = load_tree()

from tests.generation.test_utils import GenerationTesterMixin  # noqa: E402
from tests.test_configuration_common import ConfigTester  # noqa: E402
from tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor  # noqa: E402
from tests.test_pipeline_mixin import PipelineTesterMixin  # noqa: E402
from transformers.models.auto import modeling_auto  # noqa: E402

from cosmo_vl.modeling import (  # noqa: E402
    CosmoConfig,
    CosmoForConditionalGeneration,
    CosmoForZeroShotImageClassification,
    CosmoModel,
)

# transformers' mixins pick labels and skip base models by the auto-class name tables, which list in-library models
# only: CosMo is entered where cosmo_vl.registration registers it with the Auto classes.
AUTO_NAMES = {
    "MODEL_MAPPING_NAMES": "CosmoModel",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": "CosmoForConditionalGeneration",
    "MODEL_FOR_ZERO_SHOT_IMAGE_CLASSIFICATION_MAPPING_NAMES": "CosmoForZeroShotImageClassification",
}


class AutoNamesRegistered:
    """Enter CosMo in transformers' auto-class name tables for the duration of the test class."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        names = [mock.patch.dict(getattr(modeling_auto, table), {"cosmo": name}) for table, name in AUTO_NAMES.items()]
        start_class_patches(cls, [*names, *stale_mixin_patches()])


class CosmoTextTowerTester:
    """The text encoder of CosMo: the `unimodal_depth` text-only lower layers of the LM."""

    def __init__(self, parent):
        self.parent = parent
        self.num_hidden_layers = 1  # = unimodal_depth of the tiny config

    def prepare_config_and_inputs_for_common(self):
        config, inputs = self.parent.prepare_config_and_inputs_for_common()
        return config, {k: inputs[k] for k in ("input_ids", "attention_mask")}


class CosmoModelTester(TinyVlmTester):
    """Tiny CosMo: CLIP vision tower, Llama LM split 1 + 1, one image per sample at the start of the prompt."""

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.text_model_tester = CosmoTextTowerTester(self)

    def get_config(self):
        return CosmoConfig(
            vision_config=self.vision_config, text_config=self.text_config, unimodal_depth=1,
            cross_attention_heads=2, cross_attention_head_dim=8, num_latents=4, resampler_depth=1,
            resampler_heads=2, resampler_head_dim=8, max_num_frames=2, max_num_media=4, contrastive_dim=16,
            media_token_id=self.media_token_id, endofchunk_token_id=self.endofchunk_token_id,
            freeze_vision_tower=False, freeze_language_model=False,
        )


class CosmoModelTest(
    AutoNamesRegistered, ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase
):
    all_model_classes = (CosmoModel, CosmoForConditionalGeneration)
    pipeline_model_mapping = {"image-text-to-text": CosmoForConditionalGeneration}
    _is_composite = True
    # Granite4Vision sets it too: the vision tower's pooler (CLIP's post_layernorm) feeds nothing CosMo uses.
    test_all_params_have_gradient = False

    def setUp(self):
        self.model_tester = CosmoModelTester(self)
        self.config_tester = ConfigTester(self, config_class=CosmoConfig, has_text_modality=False,
                                          common_properties=["media_token_id", "num_latents"])

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_mismatching_num_image_tokens(self):
        """A sample whose `<visual>` placeholders do not match its images is refused, naming the sample."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config).eval()
            with torch.no_grad():
                model(**inputs)  # one placeholder, one image per sample: accepted
                ids = inputs["input_ids"].clone()
                ids[2, 3] = self.model_tester.media_token_id  # sample 2: two placeholders, one image
                with self.assertRaisesRegex(ValueError, r"Sample 2 has 2 media tokens .* but 1 images"):
                    model(**{**inputs, "input_ids": ids})
                ids = inputs["input_ids"].clone()
                ids[0, 1] = 7  # sample 0: no placeholder
                embeds = model.get_input_embeddings()(ids)  # the same check without ids: placeholders in the embeddings
                with self.assertRaisesRegex(ValueError, r"Sample 0 has 0 media tokens"):
                    model(inputs_embeds=embeds, pixel_values=inputs["pixel_values"])

    def test_inputs_embeds_match_input_ids_with_media(self):
        """The media index comes from the placeholder embeddings when only `inputs_embeds` are given."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        config.cross_attention_gate_init = 1.0  # open gates: the media change the text states
        model = CosmoForConditionalGeneration(config).eval()
        with torch.no_grad():
            from_ids = model(**inputs).logits
            embeds = model.get_input_embeddings()(inputs["input_ids"])
            from_embeds = model(inputs_embeds=embeds, pixel_values=inputs["pixel_values"],
                                attention_mask=inputs["attention_mask"]).logits
            no_media = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        torch.testing.assert_close(from_embeds, from_ids)
        self.assertFalse(torch.allclose(no_media[:, 1:], from_ids[:, 1:], atol=1e-4))


class CosmoZeroShotTester(CosmoModelTester):
    """Texts in the training-pair layout `<s><visual>{text}<|endofchunk|></s>` (kept as they are by
    `contrastive_text_ids`), one image each; `return_loss` gives the contrastive loss, as CLIP's tester does."""

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 5) + 5
        input_ids[:, 0], input_ids[:, 1] = 1, self.media_token_id
        input_ids[:, -2], input_ids[:, -1] = self.endofchunk_token_id, 2
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return config, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                        "pixel_values": pixel_values, "return_loss": True}


class CosmoZeroShotTest(AutoNamesRegistered, ModelTesterMixin, unittest.TestCase):
    all_model_classes = (CosmoForZeroShotImageClassification,)
    additional_model_inputs = ["pixel_values"]
    test_resize_embeddings = False
    test_attention_outputs = False
    _is_composite = True
    # Granite4Vision sets it too: the dual encoder leaves the LM above the split and the tower's pooler unused.
    test_all_params_have_gradient = False

    def setUp(self):
        self.model_tester = CosmoZeroShotTester(self)

    @unittest.skip(reason="CLIPModel skips it too: hidden states are tested on the towers (CosmoModelTest)")
    def test_hidden_states_output(self):
        pass

    @unittest.skip(reason="CLIPModel skips it too: inputs_embeds are tested on the towers (CosmoModelTest)")
    def test_inputs_embeds(self):
        pass

    @unittest.skip(reason="CLIPModel skips it too: retain_grad is tested on the towers (CosmoModelTest)")
    def test_retain_grad_hidden_states_attentions(self):
        pass

    def test_logits_match_independent_features(self):
        """logits_per_image = scale * image_embeds @ text_embeds.T with the embeddings of `CosmoModel`."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = CosmoForZeroShotImageClassification(config).eval()
        with torch.no_grad():
            out = model(**inputs)
            image = model.model.get_image_features(inputs["pixel_values"]).pooler_output
            text = model.model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
        expected = model.model.logit_scale() * image @ text.t()
        torch.testing.assert_close(out.logits_per_image, expected)
        torch.testing.assert_close(out.logits_per_text, expected.t())
        self.assertEqual(tuple(out.logits_per_image.shape), (3, 3))
