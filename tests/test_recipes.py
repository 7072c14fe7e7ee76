"""Every shipped small-data recipe loads, trains a few steps and samples through the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from ecar.cli import main as cli_main
from ecar.config import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.hidden=32", "model.depth=1", "model.heads=2", "train.batch_size=8", "train.max_steps=2",
        "train.tensorboard=false", "train.log_every=1", "train.warmup_steps=1"]


@pytest.mark.parametrize("name", ["fashion_dit", "fashion_flowar", "fashion_ecar"])
def test_fashion_recipes_train_and_sample(name, tmp_path, fashion_mnist_dir):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.data.name == "fashion-mnist" and cfg.model.patch == 4
    if name != "fashion_dit":
        assert cfg.model.mode == ("flowar" if name == "fashion_flowar" else "ecar")
        assert len(cfg.sample.stage_steps) >= 4  # a real pyramid: 1, 2, 4, 8 token grids
    run = tmp_path / "run"
    over = TINY + (["model.head_width=32", "model.head_heads=2"] if name != "fashion_dit" else [])
    assert cli_main(["train", "--quiet", "--config", str(ROOT / "configs" / f"{name}.yaml"),
                     "--out", str(run), *over]) == 0
    out = tmp_path / "grid.png"
    assert cli_main(["sample", "--ckpt", str(run), "--n", "10", "--out", str(out), "--steps", "1"]) == 0
    assert Image.open(out).size[0] > 32 * 5
