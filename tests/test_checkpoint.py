"""Checkpoints: one folder per step made current in one rename, the newest complete one
loads, the old layout still loads, clear errors for missing or mismatched ones."""

import logging
import os
import shutil
import stat

import pytest
import torch
from safetensors.torch import save_file

from ecar import load
from ecar.build import LatentSpec, build_model
from ecar.checkpoint import (
    CHECKPOINT_FILES,
    RUN_MARKER,
    SAVE_PAUSE_ENV,
    CheckpointError,
    find_checkpoint,
    has_checkpoint,
    is_run,
    load_checkpoint,
    load_state_into,
    mark_run,
    save_checkpoint,
)
from ecar.config import load_config
from ecar.train.ema import make_ema


def _save(run, name="dit-tiny", step=3, keep_last=2):
    cfg = load_config(None, [f"model.name={name}", "data.name=digits"])
    cfg.data.resolution, cfg.data.channels, cfg.data.num_classes = 16, 1, 10
    model, _ = build_model(cfg, LatentSpec(1, 16, 10))
    torch.manual_seed(step)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    folder = save_checkpoint(run, model=model, ema=make_ema(model), cfg=cfg, step=step,
                             train_state={"optimizer": {}}, keep_last=keep_last)
    return cfg, model, folder


def _old_layout(run, tmp_path, step=3):
    """A run directory as ecar wrote it before checkpoints had folders: the four files in it."""
    _, model, folder = _save(tmp_path / "src", step=step)
    run.mkdir()
    for f in CHECKPOINT_FILES:
        shutil.copy2(folder / f, run / f)
    return model


def _steps(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def test_round_trip(tmp_path):
    cfg, model, folder = _save(tmp_path)
    assert folder == tmp_path / "checkpoints" / "step-00000003"
    assert _steps(tmp_path) == ["step-00000003"]  # nothing hidden left behind
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml", "ema.safetensors", "model.safetensors", "train_state.pt"]
    for path in (tmp_path, tmp_path / "checkpoints", folder):  # run, its checkpoints/, one step
        ck = load_checkpoint(path)
        assert ck.step == 3 and ck.family == "dit" and ck.cfg == cfg and ck.directory == folder
    loaded = load(tmp_path, "cpu", ema=False)
    assert loaded.directory == folder and loaded.step == 3
    for (k, a), b in zip(model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_old_layout_still_loads(tmp_path):
    """Runs written before this layout (the four files in the run directory) load unchanged."""
    run = tmp_path / "old"
    model = _old_layout(run, tmp_path)
    assert is_run(run) and has_checkpoint(run)
    ck = load_checkpoint(run)
    assert ck.step == 3 and ck.directory == run
    loaded = load(run, "cpu", ema=False)
    for (k, a), b in zip(model.state_dict().items(), loaded.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_newest_checkpoint_wins_and_old_ones_are_pruned(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step=step, keep_last=2)
    assert _steps(tmp_path) == ["step-00000003", "step-00000004"]
    assert load_checkpoint(tmp_path).step == 4
    _save(tmp_path, step=5, keep_last=1)
    assert _steps(tmp_path) == ["step-00000005"]


def test_damaged_newest_falls_back_to_the_previous_one(tmp_path, caplog):
    _save(tmp_path, step=3)
    _, _, newest = _save(tmp_path, step=4)
    (newest / "ema.safetensors").write_bytes(b"torn")
    caplog.set_level(logging.WARNING)
    ck = load_checkpoint(tmp_path)
    assert ck.step == 3 and ck.directory.name == "step-00000003"
    assert "skipping checkpoint" in caplog.text and "step-00000004" in caplog.text
    assert find_checkpoint(tmp_path).step == 3
    with pytest.raises(CheckpointError, match="damaged"):  # named explicitly: no fallback
        load_checkpoint(newest)


def test_unfinished_save_is_skipped_reported_and_cleaned(tmp_path, caplog):
    _save(tmp_path, step=3)
    unfinished = tmp_path / "checkpoints" / ".step-00000004.tmp-0badf00d"
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"half")
    caplog.set_level(logging.WARNING)
    assert load_checkpoint(tmp_path).step == 3
    assert "unfinished save of step 4" in caplog.text
    _save(tmp_path, step=4)  # the next save deletes the leftover
    assert _steps(tmp_path) == ["step-00000003", "step-00000004"]


def test_run_killed_in_its_first_save_says_so(tmp_path):
    (tmp_path / "checkpoints" / ".step-00000002.tmp-0badf00d").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="before its first checkpoint"):
        load_checkpoint(tmp_path)


def test_old_layout_is_pruned_once_newer_checkpoints_exist(tmp_path):
    run = tmp_path / "old"
    _old_layout(run, tmp_path, step=3)
    mark_run(run)
    _save(run, step=4, keep_last=2)
    assert (run / "model.safetensors").is_file()  # two checkpoints: the old one and step 4
    assert load_checkpoint(run).step == 4
    _save(run, step=5, keep_last=2)
    assert not any((run / f).exists() for f in CHECKPOINT_FILES)
    assert _steps(run) == ["step-00000004", "step-00000005"] and is_run(run)


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        _, _, folder = _save(tmp_path)
        mark_run(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    for f in (*folder.iterdir(), tmp_path / RUN_MARKER):
        assert stat.S_IMODE(f.stat().st_mode) == 0o640, f


def test_someone_elses_files_are_not_a_run(tmp_path):
    (tmp_path / "config.yaml").write_text("title: my thesis\n")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert not is_run(tmp_path)
    assert not is_run(tmp_path / "missing")
    mark_run(tmp_path / "run")
    assert is_run(tmp_path / "run")


def test_the_crash_test_hook_is_inert_when_unset(tmp_path, monkeypatch):
    monkeypatch.delenv(SAVE_PAUSE_ENV, raising=False)
    monkeypatch.setattr("time.sleep", lambda s: pytest.fail("a save slept"))
    _save(tmp_path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path)


def test_mismatched_shapes_are_explained(tmp_path):
    _, _, folder = _save(tmp_path)
    text = (folder / "config.yaml").read_text().replace("hidden: 64", "hidden: 96")
    (folder / "config.yaml").write_text(text)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load(tmp_path, "cpu")


def test_wrong_family_is_explained(tmp_path):
    _, _, folder = _save(tmp_path, "dit-tiny")
    _, _, other = _save(tmp_path / "other", "ecar-tiny")
    (folder / "config.yaml").write_text((other / "config.yaml").read_text())
    with pytest.raises(CheckpointError, match="family 'dit'"):
        load_checkpoint(tmp_path)


def test_torn_old_layout_is_detected(tmp_path):
    """The old layout could be torn between two steps; loading still says so."""
    run = tmp_path / "old"
    _old_layout(run, tmp_path, step=3)
    _, _, folder = _save(tmp_path / "newer", step=4)
    shutil.copy2(folder / "model.safetensors", run / "model.safetensors")
    with pytest.raises(CheckpointError, match="disagree"):
        load_checkpoint(run)


def test_damaged_file(tmp_path):
    _, _, folder = _save(tmp_path)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path)


def test_load_state_into_reports_missing():
    m = torch.nn.Linear(2, 2)
    with pytest.raises(CheckpointError, match="missing"):
        load_state_into(m, {"weight": torch.zeros(2, 2)}, "x")
