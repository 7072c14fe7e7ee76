"""Training end to end: CLI, exact resume, DDP on CPU, and the errors a user can cause."""

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ecar.checkpoint import find_checkpoint
from ecar.cli import main

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "digits_dit.yaml")
FAST = [
    "model.hidden=32", "model.depth=1", "model.heads=2", "train.batch_size=16",
    "train.log_every=5", "train.warmup_steps=3", "train.tensorboard=false", "sample.steps=2",
]


def _train(out, *extra, resume=False, config=RECIPE):
    args = ["train", "--quiet", "--out", str(out)]
    if config:
        args += ["--config", config]
    if resume:
        args.append("--resume")
    return main(args + FAST + list(extra))


def test_train_then_sample_grid_and_dir(tmp_path, capsys):
    run = tmp_path / "a"
    assert _train(run, "train.max_steps=6") == 0
    for f in ("model.safetensors", "ema.safetensors", "config.yaml", "train_state.pt"):
        assert (run / "checkpoints" / "step-00000006" / f).is_file(), f
    assert (run / "metrics.jsonl").is_file() and (run / "ecar-run.json").is_file()
    assert (run / "samples" / "step_0000006.png").is_file()
    assert main(["sample", "--ckpt", str(run), "--n", "16", "--out", str(tmp_path / "a.png")]) == 0
    grid = np.asarray(Image.open(tmp_path / "a.png"))
    assert grid.ndim == 2 and grid.shape[0] > 16 and grid.shape[1] > 16
    assert main(["sample", "--ckpt", str(run), "--n", "5", "--classes", "3,7",
                 "--out", str(tmp_path / "imgs")]) == 0
    files = sorted((tmp_path / "imgs").glob("*.png"))
    assert len(files) == 5 and Image.open(files[0]).size == (16, 16)
    assert main(["info", "--ckpt", str(run)]) == 0
    out = capsys.readouterr().out
    assert "step:       6" in out and "dit" in out


def _read(run, *files):
    """Bytes of the current checkpoint's weights (and ``files``) of a run directory."""
    folder = find_checkpoint(run).directory
    return tuple((folder / f).read_bytes() for f in ("model.safetensors", "ema.safetensors", *files))


def test_exact_resume_is_bitwise_equal(tmp_path):
    """40 steps in one run == 20 steps, then --resume to 40 (weights and EMA, bit for bit)."""
    common = ["train.schedule=constant", "train.warmup_steps=5"]
    assert _train(tmp_path / "full", "train.max_steps=40", *common) == 0
    assert _train(tmp_path / "half", "train.max_steps=20", *common) == 0
    assert _read(tmp_path / "half") != _read(tmp_path / "full")
    assert _train(tmp_path / "half", "train.max_steps=40", config=None, resume=True) == 0
    assert _read(tmp_path / "half") == _read(tmp_path / "full")


def test_refuses_to_overwrite_and_resume_checks_model(tmp_path, capsys):
    run = tmp_path / "r"
    assert _train(run, "train.max_steps=2") == 0
    assert _train(run, "train.max_steps=2") == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err
    assert _train(run, "train.max_steps=4", "model.depth=2", resume=True) == 1
    assert "differs" in capsys.readouterr().err


def test_old_layout_run_resumes_bitwise_into_the_new_layout(tmp_path, capsys):
    """A run written before checkpoints had folders (four files in the run directory, no
    marker) resumes exactly; its new checkpoints go to checkpoints/, and the old files are
    pruned once train.keep_last newer ones exist."""
    common = ["train.schedule=constant", "train.ckpt_every=2"]
    assert _train(tmp_path / "full", "train.max_steps=8", *common) == 0
    old = tmp_path / "old"
    assert _train(old, "train.max_steps=4", *common) == 0
    newest = find_checkpoint(old).directory
    for f in newest.iterdir():
        f.rename(old / f.name)
    for leftover in (old / "checkpoints", old / "ecar-run.json"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    assert main(["info", "--ckpt", str(old)]) == 0
    assert "step:       4" in capsys.readouterr().out
    assert _train(old, "train.max_steps=8", config=None, resume=True) == 0
    assert _read(old) == _read(tmp_path / "full")
    assert sorted(p.name for p in (old / "checkpoints").iterdir()) == ["step-00000006", "step-00000008"]
    assert not (old / "model.safetensors").exists()


def test_every_reader_skips_a_damaged_newest_checkpoint_and_says_so(tmp_path, capsys, caplog):
    run = tmp_path / "r"
    assert _train(run, "train.max_steps=4", "train.ckpt_every=2", "train.schedule=constant") == 0
    older, newest = (run / "checkpoints" / f"step-0000000{i}" for i in (2, 4))
    (newest / "model.safetensors").write_bytes(b"torn")
    caplog.set_level(logging.WARNING)
    assert main(["info", "--ckpt", str(run)]) == 0
    assert f"checkpoint: {older}" in capsys.readouterr().out
    assert "skipping checkpoint" in caplog.text and "step-00000004" in caplog.text
    caplog.clear()
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert "skipping checkpoint" in caplog.text
    assert main(["sample", "--ckpt", str(older), "--n", "2", "--out", str(tmp_path / "t.png")]) == 0
    caplog.set_level(logging.INFO)
    assert _train(run, "train.max_steps=6", config=None, resume=True) == 0
    assert f"resuming from {older} (step 2)" in caplog.text
    assert find_checkpoint(run).step == 6 and find_checkpoint(newest).step == 4  # replaced


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, capsys):
    run = tmp_path / "nan"
    assert _train(run, "train.max_steps=3", "train.schedule=constant") == 0
    before = _read(run, "train_state.pt")
    code = _train(run, "train.max_steps=50", "train.lr=1e30", "train.grad_clip=0",
                  "train.ckpt_every=1000", config=None, resume=True)
    err = capsys.readouterr().err
    assert code == 1 and "loss became" in err and "step 3" in err
    assert _read(run, "train_state.pt") == before
    assert main(["sample", "--ckpt", str(run), "--n", "2", "--out", str(tmp_path / "ok.png")]) == 0


def test_unknown_config_key_exits_nonzero(tmp_path, capsys):
    code = main(["train", "--config", RECIPE, "--out", str(tmp_path / "x"), "train.lr_max=3"])
    err = capsys.readouterr().err
    assert code == 2 and "train.lr_max" in err and "batch_size" in err and "Traceback" not in err
    code = main(["train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    code = main(["sample", "--ckpt", str(tmp_path / "nothing"), "--out", str(tmp_path / "a.png")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error:") and "does not exist" in err


def test_imagefolder_with_corrupt_files_trains(tmp_path):
    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            arr = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    (root / "cats" / "broken.png").write_bytes(b"not an image at all")
    (root / "dogs" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 10)
    with pytest.warns(UserWarning, match="skipped 2"):
        code = _train(tmp_path / "run", f"data.name=imagefolder:{root}", "data.resolution=8",
                      "train.max_steps=2", "train.batch_size=4")
    assert code == 0
    assert main(["info", "--ckpt", str(tmp_path / "run")]) == 0


def test_torchrun_ddp_on_cpu_then_single_process_sample(tmp_path):
    """torchrun with 2 gloo ranks trains; a single-process `ecar sample` loads its checkpoint."""
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "ecar", "train", "--quiet", "--config", RECIPE, "--out", str(run),
           "train.max_steps=4", *FAST]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "checkpoints" / "step-00000004" / "model.safetensors").is_file()
    assert main(["sample", "--ckpt", str(run), "--n", "4", "--out", str(tmp_path / "d.png")]) == 0


@pytest.mark.parametrize("recipe", ["digits_ecar.yaml", "digits_flowar.yaml", "shapes_ecar.yaml"])
def test_multistage_recipes_train_and_sample(tmp_path, recipe):
    run = tmp_path / "run"
    fast = ["model.hidden=32", "model.depth=1", "model.heads=2", "model.head_width=32",
            "model.head_depth=1", "train.batch_size=8", "train.tensorboard=false",
            "sample.stage_steps=null", "sample.steps=2", "data.shapes_size=64"]
    code = main(["train", "--quiet", "--config", str(ROOT / "configs" / recipe), "--out", str(run),
                 "train.max_steps=3", *fast])
    assert code == 0
    strip = tmp_path / "stages.png"
    assert main(["sample", "--ckpt", str(run), "--n", "4", "--out", str(tmp_path / "g.png"),
                 "--stages-out", str(strip)]) == 0
    img = np.asarray(Image.open(strip))
    assert img.shape[0] > img.shape[1] / 4  # rows of samples, one column per stage
    assert '"loss_stage1"' in (run / "metrics.jsonl").read_text()  # per-stage losses are logged


def test_bf16_autocast_trains_on_cpu(tmp_path):
    run = tmp_path / "bf16"
    assert _train(run, "train.max_steps=3", "train.precision=bf16") == 0
    import json as _json

    rows = [_json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(np.isfinite(r["loss"]) for r in rows)
