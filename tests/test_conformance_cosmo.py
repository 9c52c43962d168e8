"""CosMo against transformers' own generic model, generation, config and pipeline tests (installed version)."""

import unittest

import torch
from transformers_suite import load_tree, require_repository_mixins  # noqa: I001

REAL_MIXINS = load_tree()

from tests.generation.test_utils import GenerationTesterMixin  # noqa: E402
from tests.test_configuration_common import ConfigTester  # noqa: E402
from tests.test_modeling_common import ModelTesterMixin, floats_tensor, ids_tensor  # noqa: E402
from tests.test_pipeline_mixin import PipelineTesterMixin  # noqa: E402

from cosmo_vl.modeling import (  # noqa: E402
    CosmoConfig,
    CosmoForConditionalGeneration,
    CosmoForZeroShotImageClassification,
    CosmoModel,
)


class CosmoModelTester:
    """Tiny CosMo: CLIP vision tower, Llama LM split 1 + 1, one image per sample at the start of the prompt."""

    def __init__(self, parent, batch_size=3, text_length=7, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = text_length
        self.is_training = is_training
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.media_token_id = 3
        self.endofchunk_token_id = 4
        self.pad_token_id = 0
        self.image_size = 8
        self.num_channels = 3
        self.text_config = {
            "model_type": "llama", "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": 37, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": 2,
            "max_position_embeddings": 64, "pad_token_id": self.pad_token_id, "bos_token_id": 1,
            "eos_token_id": 2, "tie_word_embeddings": False,
        }
        self.vision_config = {
            "model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
            "num_attention_heads": 4, "image_size": self.image_size, "patch_size": 4, "num_channels": 3,
        }

    def get_config(self):
        return CosmoConfig(
            vision_config=self.vision_config, text_config=self.text_config, unimodal_depth=1,
            cross_attention_heads=2, cross_attention_head_dim=8, num_latents=4, resampler_depth=1,
            resampler_heads=2, resampler_head_dim=8, max_num_frames=2, max_num_media=4, contrastive_dim=16,
            media_token_id=self.media_token_id, endofchunk_token_id=self.endofchunk_token_id,
            freeze_vision_tower=False, freeze_language_model=False,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 5) + 5
        input_ids[:, 1] = self.media_token_id
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": pixel_values,
        }
        return config, inputs


class CosmoModelTest(ModelTesterMixin, GenerationTesterMixin, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (CosmoModel, CosmoForConditionalGeneration)
    pipeline_model_mapping = {"image-text-to-text": CosmoForConditionalGeneration}
    _is_composite = True

    def setUp(self):
        self.model_tester = CosmoModelTester(self)
        self.config_tester = ConfigTester(self, config_class=CosmoConfig, has_text_modality=False,
                                          common_properties=["media_token_id", "num_latents"])

    def test_config(self):
        self.config_tester.run_common_tests()
