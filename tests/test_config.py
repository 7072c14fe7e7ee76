import pytest

from ecar.config import ConfigError, config_to_yaml, load_config, config_from_dict
from ecar.models.dit import DiTConfig
from ecar.models.ecar import ECARConfig
import yaml


def test_unknown_key_names_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.learning_rate=0.1"])
    msg = str(e.value)
    assert "train.learning_rate" in msg and "max_steps" in msg and "lr" in msg


def test_unknown_section_and_model_key():
    with pytest.raises(ConfigError, match="Valid sections"):
        config_from_dict({"trian": {}})
    with pytest.raises(ConfigError, match="hidden"):
        load_config(None, ["model.widht=3"])
    with pytest.raises(ConfigError, match="Registered models"):
        load_config(None, ["model.name=dit-huge"])


def test_types_are_checked_and_coerced():
    cfg = load_config(None, ["train.lr=1", "train.max_steps=5"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    with pytest.raises(ConfigError, match="integer"):
        load_config(None, ["train.max_steps=abc"])
    with pytest.raises(ConfigError, match="choose one of"):
        load_config(None, ["sample.sampler=rk4"])


def test_registry_entry_then_overrides():
    cfg = load_config(None, ["model.name=dit-s/2", "model.depth=3"])
    assert isinstance(cfg.model, DiTConfig)
    assert (cfg.model.hidden, cfg.model.depth) == (384, 3)
    cfg = load_config(None, ["model.name=ecar-tiny", "model.windows=[0.3,0.6,0.8]"])
    assert isinstance(cfg.model, ECARConfig) and cfg.model.windows == [0.3, 0.6, 0.8]


def test_yaml_round_trip():
    cfg = load_config("configs/digits_dit.yaml", ["train.max_steps=7"])
    again = config_from_dict(yaml.safe_load(config_to_yaml(cfg)))
    assert again == cfg
