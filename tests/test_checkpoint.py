"""Checkpoint files: atomic writes, round trip, clear errors for missing or mismatched ones."""

import pytest
import torch

from ecar.build import LatentSpec, build_model, load_for_inference
from ecar.config import load_config
from ecar.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_into,
    save_checkpoint,
)
from ecar.train.ema import make_ema


def _save(tmp_path, name="dit-tiny", step=3):
    cfg = load_config(None, [f"model.name={name}", "data.name=digits"])
    cfg.data.resolution, cfg.data.channels, cfg.data.num_classes = 16, 1, 10
    model, _ = build_model(cfg, LatentSpec(1, 16, 10))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    save_checkpoint(tmp_path, model=model, ema=make_ema(model), cfg=cfg, step=step,
                    train_state={"optimizer": {}})
    return cfg, model


def test_round_trip(tmp_path):
    cfg, model = _save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.yaml", "ema.safetensors", "model.safetensors", "train_state.pt"]
    ck = load_checkpoint(tmp_path)
    assert ck.step == 3 and ck.family == "dit" and ck.cfg == cfg
    loaded = load_for_inference(str(tmp_path), torch.device("cpu"), use_ema=False)
    for (k, a), b in zip(model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path)


def test_mismatched_shapes_are_explained(tmp_path):
    _save(tmp_path)
    text = (tmp_path / "config.yaml").read_text().replace("hidden: 64", "hidden: 96")
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_for_inference(str(tmp_path), torch.device("cpu"))


def test_wrong_family_is_explained(tmp_path):
    _save(tmp_path, "dit-tiny")
    other = tmp_path / "other"
    _save(other, "ecar-tiny")
    (tmp_path / "config.yaml").write_text((other / "config.yaml").read_text())
    with pytest.raises(CheckpointError, match="family 'dit'"):
        load_checkpoint(tmp_path)


def test_interrupted_save_is_detected(tmp_path):
    _save(tmp_path, step=3)
    keep = (tmp_path / "ema.safetensors").read_bytes()
    _save(tmp_path, step=4)
    (tmp_path / "ema.safetensors").write_bytes(keep)
    with pytest.raises(CheckpointError, match="disagree"):
        load_checkpoint(tmp_path)


def test_damaged_file(tmp_path):
    _save(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path)


def test_load_state_into_reports_missing():
    m = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="missing"):
        load_state_into(m, {"weight": torch.zeros(2, 2)}, "x")
