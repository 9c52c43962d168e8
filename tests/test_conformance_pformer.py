"""P-Former against transformers' own generic model and config tests (installed version)."""

import tempfile
import unittest

import torch
import torch.nn.functional as F
from transformers_suite import load_tree, stale_mixin_patches, start_class_patches  # noqa: I001

REAL_MIXINS = load_tree()

from tests.test_configuration_common import ConfigTester  # noqa: E402
from tests.test_modeling_common import ModelTesterMixin, ids_tensor  # noqa: E402
from tests.test_pipeline_mixin import PipelineTesterMixin  # noqa: E402

from cosmo_vl.modeling import PFormerConfig, PFormerModel  # noqa: E402


class PFormerModelTester:
    """Tiny P-Former: 2-layer BERT encoder, 2-layer Llama LM, 4 prompts. The sentence comes in both tokenizers
    (`input_ids` for the encoder, `lm_input_ids` for the LM), whose vocabularies differ. The two widths are equal:
    the mixin reads the width of `get_text_features` from `text_config` (the LM here), the features are the
    encoder's."""

    def __init__(self, parent, batch_size=3, seq_length=7, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = is_training
        self.vocab_size = 99
        self.lm_vocab_size = 93
        self.lm_seq_length = 6
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.num_prompts = 4
        self.pad_token_id = 0
        self.encoder_config = {
            "model_type": "bert", "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
            "intermediate_size": 37, "max_position_embeddings": 64, "pad_token_id": self.pad_token_id,
        }
        self.text_config = {
            "model_type": "llama", "vocab_size": self.lm_vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 64, "pad_token_id": self.pad_token_id, "bos_token_id": 1,
            "eos_token_id": 2, "tie_word_embeddings": True,  # as OPT, the LM of the paper
        }

    def get_config(self):
        return PFormerConfig(
            encoder_config=self.encoder_config, text_config=self.text_config, num_prompts=self.num_prompts,
            prompt_hidden_size=16, contrastive_dim=16, mask_token_id=3,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size - 5) + 5
        input_ids[:, 0] = 1  # [CLS] / BOS
        lm_input_ids = ids_tensor([self.batch_size, self.lm_seq_length], self.lm_vocab_size - 5) + 5
        lm_input_ids[:, 0] = 1  # BOS
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "lm_input_ids": lm_input_ids,
            "lm_attention_mask": torch.ones_like(lm_input_ids),
        }
        return config, inputs


class PFormerModelTest(ModelTesterMixin, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (PFormerModel,)
    # None fits: the outputs start with the training loss, and the prompts (read through `get_prompts`) are no
    # pipeline task's output.
    pipeline_model_mapping = {}
    _is_composite = True
    test_can_init_all_missing_weights_before_2023 = True  # the config file carries no year: run it
    additional_model_inputs = ["lm_input_ids"]  # the LM's ids are outside the encoder's (larger) vocabulary

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        start_class_patches(cls, stale_mixin_patches())

    def setUp(self):
        self.model_tester = PFormerModelTester(self)
        self.config_tester = ConfigTester(self, config_class=PFormerConfig, has_text_modality=False,
                                          common_properties=["num_prompts", "contrastive_dim"])

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_resize_token_embeddings_round_trip(self):
        """Resizing the input embeddings (the encoder's) is recorded in the encoder's sub-config, so the model
        reloads; the LM keeps its vocabulary."""
        tester = self.model_tester
        config, inputs = tester.prepare_config_and_inputs_for_common()
        model = PFormerModel(config).eval()
        model.resize_token_embeddings(tester.vocab_size + 7)
        inputs["input_ids"][:, 1] = tester.vocab_size + 6  # a new token
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            loaded = PFormerModel.from_pretrained(tmp).eval()
        self.assertEqual(loaded.config.encoder_config.vocab_size, tester.vocab_size + 7)
        self.assertEqual(loaded.config.text_config.vocab_size, tester.lm_vocab_size)
        self.assertEqual(loaded.get_input_embeddings().num_embeddings, tester.vocab_size + 7)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs).prompts, model(**inputs).prompts)

    def test_training_views_batched_or_one_by_one(self):
        """In training the two masked views share one encoder batch, or run one by one when the first view's hidden
        states are asked for: the same masks give the same losses and prompts (no dropout), and the hidden states
        returned are the first view's, whose last [CLS] makes the prompts."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        config.encoder_config.hidden_dropout_prob = config.encoder_config.attention_probs_dropout_prob = 0.0
        model = PFormerModel(config).train()
        torch.manual_seed(0)
        batched = model(**inputs)
        torch.manual_seed(0)
        one_by_one = model(**inputs, output_hidden_states=True)
        self.assertIsNone(batched.hidden_states)
        self.assertEqual(len(one_by_one.hidden_states), self.model_tester.num_hidden_layers + 1)
        for name in ("loss", "lm_loss", "contrastive_loss", "word_embedding_loss", "prompts", "text_embeds"):
            torch.testing.assert_close(one_by_one[name], batched[name])
        last = one_by_one.hidden_states[-1]  # (B, T, H)
        torch.testing.assert_close(model.prompt_head(last[:, 0]), one_by_one.prompts)

    def test_text_features_are_the_contrastive_embeddings(self):
        """`get_text_features`: the encoder's states, and as `pooler_output` the normalised [CLS] projection that
        the forward returns as `text_embeds` (eval: unmasked views)."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        model = PFormerModel(config).eval()
        with torch.no_grad():
            features = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
            states = model.encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            expected = F.normalize(model.contrastive_projection(states.last_hidden_state[:, 0]), dim=-1)  # (B, C)
            text_embeds = model(**inputs).text_embeds
        torch.testing.assert_close(features.last_hidden_state, states.last_hidden_state)
        torch.testing.assert_close(features.pooler_output, expected)
        torch.testing.assert_close(text_embeds, expected)
