"""FMS's own model test suite (config round trip, consistency, fullgraph compile), tiny config."""

from fms.models.granite import GraniteConfig
from fms.testing._internal.model_test_suite import (
    ModelCompileTestSuite,
    ModelConfigTestSuite,
    ModelConsistencyTestSuite,
)

from granite_fms import ConformerConfig, GraniteSpeech, GraniteSpeechConfig, QFormerConfig
from helpers import fms_suite_fixtures

_config = GraniteSpeechConfig(
    encoder_config=ConformerConfig(
        emb_dim=16,
        nlayers=2,
        nheads=2,
        head_dim=8,
        output_dim=6,
        context_size=10,
        max_pos_emb=16,
        conv_kernel_size=3,
    ),
    projector_config=QFormerConfig(emb_dim=16, encoder_dim=16, nlayers=1, nheads=2, llm_dim=32),
    text_config=GraniteConfig(
        src_vocab_size=64,
        emb_dim=32,
        nheads=4,
        head_dim=8,
        kvheads=2,
        nlayers=2,
        hidden_grow_factor=2.0,
        multiple_of=1,
        max_expected_seq_len=128,
        tie_heads=True,
        pad_id=0,
        embedding_multiplier=12.0,
        residual_multiplier=0.22,
        attention_multiplier=1 / 8,
        logits_scaling=8.0,
    ),
    audio_token_index=63,
    lora_rank=2,
    lora_alpha=1.0,
)


GraniteSpeechFixtures = fms_suite_fixtures(GraniteSpeech, _config)


class TestGraniteSpeech(
    ModelConfigTestSuite, ModelConsistencyTestSuite, ModelCompileTestSuite, GraniteSpeechFixtures
):
    _get_signature_params = ["x"]

    def test_config_round_trip_keeps_nested_configs(self, config):
        restored = GraniteSpeechConfig(**config.as_dict())
        assert isinstance(restored.encoder_config, ConformerConfig)
        assert restored == config
