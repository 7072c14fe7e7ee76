"""`ecar demo`: the embedded recipe is the shipped one, and the demo writes what it promises."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from ecar.cli import main
from ecar.config import load_config
from ecar.demo import demo_config

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_recipe_equals_configs_file():
    embedded = demo_config(4.0)
    shipped = load_config(ROOT / "configs" / "digits_ecar.yaml", ["train.max_minutes=4.0"])
    assert embedded == shipped


def test_demo_writes_samples_stages_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--quiet", "--out", str(out), "--minutes", "0.05", "--fid-samples", "50",
                 "model.hidden=32", "model.depth=1", "model.heads=2", "model.head_width=32",
                 "model.head_depth=1", "train.batch_size=8", "train.tensorboard=false",
                 "train.max_steps=3"])
    assert code == 0
    grid = np.asarray(Image.open(out / "samples.png"))
    assert grid.shape[0] == grid.shape[1]  # 10 x 10 tiles
    stages = np.asarray(Image.open(out / "stages.png"))
    assert stages.shape[0] > stages.shape[1]  # 10 rows (classes) x 3 columns (stages)
    m = json.loads((out / "metrics.json").read_text())
    for key in ("model", "params", "train_steps", "train_seconds", "gflops_per_image", "seconds_per_image"):
        assert key in m, key
    assert m["train_steps"] <= 3 and m["params"] > 0 and m["gflops_per_image"] > 0
    printed = capsys.readouterr().out
    assert "samples.png" in printed and "metrics.json" in printed
