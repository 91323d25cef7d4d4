"""FMS's own model test suite (config round trip, output signature, weight keys), tiny config."""

import torch
from fms.testing._internal.model_test_suite import (
    ModelConfigTestSuite,
    ModelConsistencyTestSuite,
)

from granite_fms import GraniteSpeech5, GraniteSpeech5Config
from helpers import fms_suite_fixtures

_config = GraniteSpeech5Config(
    n_mels=8,
    emb_dim=16,
    nlayers=4,
    nheads=2,
    head_dim=8,
    context_size=4,
    max_pos_emb=8,
    conv_kernel_size=3,
    src_vocab_size=12,
)


GraniteSpeech5Fixtures = fms_suite_fixtures(GraniteSpeech5, _config)


class TestGraniteSpeech5(ModelConfigTestSuite, ModelConsistencyTestSuite, GraniteSpeech5Fixtures):
    _get_signature_params = ["x"]

    @property
    def _get_signature_input_ids(self) -> torch.Tensor:
        """Features, not token ids: 19 frames (4 output frames), fixed values."""
        return torch.linspace(-1, 1, 19 * _config.input_dim).reshape(1, 19, _config.input_dim)

    def test_config_round_trip_keeps_tuples(self, config):
        restored = GraniteSpeech5Config(**config.as_dict())
        assert restored.subsample_layers == (0, 1)
        assert restored == config
