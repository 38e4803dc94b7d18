import pytest
import torch

from gpt2es_cli.config import PRESETS, ModelConfig
from gpt2es_cli.errors import ConfigError
from gpt2es_cli.model import GPT2


def test_presets_are_valid_and_overridable():
    for name in PRESETS:
        assert ModelConfig.from_preset(name).problems() == []
    small = ModelConfig.from_preset("small", vocab_size=16384, dropout=0.1)
    assert (small.n_layer, small.n_head, small.n_embd, small.n_positions) == (6, 6, 384, 256)
    assert small.vocab_size == 16384 and small.dropout == 0.1
    # None means "keep the preset's value" (how CLI flags that were not given arrive).
    assert ModelConfig.from_preset("small", n_layer=None).n_layer == 6


def test_gpt2_preset_has_124m_parameters():
    with torch.device("meta"):
        model = GPT2(ModelConfig.from_preset("gpt2"))
    assert model.num_parameters() == 124_439_808  # OpenAI GPT-2 small, tied output projection


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_preset("tiny", n_embd=33, n_layer=0, dropout=1.0, activation="relu")
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("n_layer must be >= 1", "divisible by n_head", "dropout must be >= 0 and < 1", "activation"):
        assert part in msg


def test_unknown_preset_and_fields():
    with pytest.raises(ConfigError, match="unknown preset 'huge'.*tiny"):
        ModelConfig.from_preset("huge")
    with pytest.raises(ConfigError, match="unknown model config field"):
        ModelConfig.from_preset("tiny", n_embed=64)
    with pytest.raises(ConfigError, match="unknown model config field"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "bogus": 1})


def test_dict_round_trip():
    cfg = ModelConfig.from_preset("small", activation="gelu")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
