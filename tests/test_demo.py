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
    embedded = demo_config(5.0)
    shipped = load_config(ROOT / "configs" / "fashion_mini_ecar.yaml", ["train.max_minutes=5.0"])
    assert embedded == shipped


def test_demo_writes_samples_stages_and_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--quiet", "--out", str(out), "--minutes", "0.05", "--fid-samples", "50",
                 "model.hidden=32", "model.heads=2", "model.head_width=32", "model.head_heads=2",
                 "model.head_depth=1", "train.batch_size=8", "train.tensorboard=false",
                 "train.max_steps=3"])
    assert code == 0
    grid = Image.open(out / "samples.png")
    # 10 rows of 10 samples, each enlarged to 96 px, class names in a margin on the left
    assert grid.height >= 10 * 96 and grid.width >= 10 * 96 + 50
    stages = np.asarray(Image.open(out / "stages.png"))
    assert stages.shape[0] > stages.shape[1]  # 10 rows (classes) x 4 columns (stages)
    gif = Image.open(out / "growing.gif")
    assert gif.n_frames == 4 and gif.info["loop"] == 0  # one frame per stage, repeating
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("L"), dtype=np.float32))
    assert frames[0].shape[1] >= 10 * 96  # one sample of each class, side by side
    assert np.abs(frames[-1] - frames[0]).mean() > 1  # the pictures change from stage to stage
    m = json.loads((out / "metrics.json").read_text())
    for key in ("model", "params", "train_steps", "train_seconds", "gflops_per_image", "seconds_per_image",
                "fid", "class_accuracy"):
        assert key in m, key
    assert m["data"] == "fashion-mini" and m["fid_reference_split"] == "heldout"
    assert m["train_steps"] <= 3 and m["params"] > 0 and m["gflops_per_image"] > 0
    assert 0 <= m["class_accuracy"] <= 1
    printed = capsys.readouterr().out
    assert "samples.png" in printed and "metrics.json" in printed
