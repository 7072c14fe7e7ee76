"""Output safety (issue 11, acceptance 1): no command replaces, appends to or adds to files
it did not create. A directory of someone else's files — with a ``config.yaml`` and a
``model.safetensors`` that are not ecar's — comes out of ``train``, ``sample``, ``eval``,
``bench`` and ``demo`` byte for byte and mtime for mtime as it went in, each refusal one
``error:`` line and a non-zero exit; reusing a run directory needs ``--resume`` or
``--overwrite``."""

import json
import logging
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ecar.bench.outputs import check_bench_out
from ecar.checkpoint import find_checkpoint, mark_run
from ecar.cli import main
from ecar.demo import check_demo_out
from ecar.errors import OutputExistsError

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "configs" / "digits_dit.yaml")
FAST = ["model.hidden=32", "model.depth=1", "model.heads=2", "train.batch_size=8",
        "train.warmup_steps=1", "train.tensorboard=false", "sample.steps=2"]


def _someone_elses(root: Path) -> Path:
    """A directory of files ecar did not write, named like the ones it writes."""
    root.mkdir()
    (root / "config.yaml").write_text("title: my thesis\nchapters: 7\n")
    save_file({"weights": torch.arange(4.0)}, str(root / "model.safetensors"), metadata={"author": "me"})
    (root / "metrics.jsonl").write_text('{"mine": 1}\n')
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "photo.png")
    (root / "run").mkdir()
    (root / "run" / "important.txt").write_text("do not delete\n")
    return root


def _snapshot(root: Path) -> dict:
    """Every entry under ``root`` (and ``root`` itself): kind, bytes, mtime and mode. A
    directory's mtime changes when an entry is created or removed in it, even briefly."""
    out = {}
    for p in [root, *sorted(root.rglob("*"))]:
        st = p.lstat()
        out[str(p.relative_to(root))] = (
            p.is_dir(), None if p.is_dir() else p.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("safety") / "run"
    assert main(["train", "--quiet", "--config", RECIPE, "--out", str(run), "train.max_steps=2", *FAST]) == 0
    return run


def test_someone_elses_directory_is_left_untouched_by_every_command(tmp_path, tiny_run, capsys):
    mine = _someone_elses(tmp_path / "mine")
    before = _snapshot(mine)
    train = ["train", "--quiet", "--config", RECIPE, "--out", str(mine), "train.max_steps=2", *FAST]
    cases = [
        (train, "not an ecar run"),
        (train + ["--overwrite"], "not an ecar run"),  # no flag makes their files ours
        (train + ["--resume"], "not an ecar run"),
        (["train", "--quiet", "--out", str(mine), "--resume"], "not an ecar run"),
        (["sample", "--ckpt", str(tiny_run), "--n", "2", "--out", str(mine)], "not empty"),
        (["sample", "--ckpt", str(tiny_run), "--n", "2", "--out", str(mine / "photo.png")], "already exists"),
        (["sample", "--ckpt", str(tiny_run), "--n", "2", "--out", str(tmp_path / "new.png"),
          "--stages-out", str(mine / "photo.png")], "already exists"),
        (["sample", "--ckpt", str(mine), "--n", "2", "--out", str(tmp_path / "new.png")], "not written by ecar"),
        (["eval", "--ckpt", str(tiny_run), "--n", "8", "--json", str(mine / "config.yaml")], "already exists"),
        (["eval", "--ckpt", str(tiny_run), "--n", "8", "--json", str(mine)], "is a directory"),
        (["eval", "--ckpt", str(mine), "--n", "8"], "not written by ecar"),
        (["info", "--ckpt", str(mine)], "not written by ecar"),
        (["bench", "--ckpts", str(tiny_run), "--out", str(mine), "--n-eval", "8"], "not an earlier bench"),
        (["bench", "--configs", RECIPE, "--out", str(mine), "--overwrite", "--n-eval", "8", *FAST],
         "not an earlier bench"),
        (["bench", "--ckpts", str(mine), "--out", str(tmp_path / "b"), "--n-eval", "8"], "not written by ecar"),
        (["demo", "--quiet", "--out", str(mine), "--minutes", "0.01", "--fid-samples", "0"],
         "not an earlier demo"),
    ]
    for argv, says in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code != 0, argv
        assert err.startswith("error:") and says in err and "Traceback" not in err, (argv, err)
        assert _snapshot(mine) == before, argv
    assert not (tmp_path / "new.png").exists() and not (tmp_path / "b").exists()


def test_demo_never_deletes_a_run_folder_it_did_not_write(tmp_path, capsys):
    """The issue's case: `demo --out D` deleted D/run, whatever it held, before validating."""
    demo = tmp_path / "d"
    (demo / "run").mkdir(parents=True)
    (demo / "run" / "important.txt").write_text("do not delete\n")
    before = _snapshot(demo)
    for argv in (["--minutes", "0.01"], ["--minutes", "-1"], ["--minutes", "0.01", "train.bogus=1"]):
        assert main(["demo", "--quiet", "--out", str(demo), "--fid-samples", "0", *argv]) != 0
        assert capsys.readouterr().err.startswith("error:")
        assert _snapshot(demo) == before


def test_demo_recognises_its_own_earlier_output(tmp_path):
    out = tmp_path / "d"
    assert check_demo_out(out) is False  # new
    out.mkdir()
    assert check_demo_out(out) is False  # empty
    mark_run(out / "run")
    (out / "samples.png").write_bytes(b"png")
    (out / "metrics.json").write_text("{}")
    assert check_demo_out(out) is True  # replaced (after validation) by the next demo
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="notes.txt"):
        check_demo_out(out)
    alone = tmp_path / "e"
    alone.mkdir()
    (alone / "samples.png").write_bytes(b"someone's picture")  # our name, but no run of ours
    with pytest.raises(OutputExistsError):
        check_demo_out(alone)


def test_bench_recognises_its_own_earlier_output(tmp_path):
    out = tmp_path / "b"
    check_bench_out(out, overwrite=False)  # new
    out.mkdir()
    check_bench_out(out, overwrite=False)  # empty
    (out / "bench.json").write_text(json.dumps({"meta": {}, "rows": []}))
    mark_run(out / "digits_dit" / "run")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_bench_out(out, overwrite=False)
    check_bench_out(out, overwrite=True)
    (out / "digits_dit" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not an earlier bench"):
        check_bench_out(out, overwrite=True)


def test_a_run_directory_is_reused_only_with_resume_or_overwrite(tmp_path, capsys, caplog):
    run = tmp_path / "run"
    args = ["train", "--quiet", "--config", RECIPE, "--out", str(run), *FAST]
    assert main(args + ["train.max_steps=3"]) == 0
    (run / "notes.txt").write_text("the user's own notes in their run\n")
    first = find_checkpoint(run)
    capsys.readouterr()
    assert main(args + ["train.max_steps=2"]) == 1
    err = capsys.readouterr().err
    assert "already holds an ecar run (checkpoint at step 3)" in err and "--overwrite" in err
    assert find_checkpoint(run).directory == first.directory
    assert main(args + ["train.max_steps=2", "--resume", "--overwrite"]) == 2
    caplog.set_level(logging.INFO)
    assert main(args + ["train.max_steps=2", "--overwrite"]) == 0
    assert "--overwrite: replacing the ecar run" in caplog.text and "step 3" in caplog.text
    assert find_checkpoint(run).step == 2 and not first.directory.exists()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 2  # a fresh log, not appended to the replaced run's
    assert (run / "notes.txt").read_text().startswith("the user's")  # not ecar's: kept


def test_sample_and_eval_replace_a_file_only_with_overwrite(tmp_path, tiny_run, capsys):
    grid, folder, js = tmp_path / "g.png", tmp_path / "imgs", tmp_path / "e.json"
    sample = ["sample", "--ckpt", str(tiny_run), "--n", "2"]
    assert main(sample + ["--out", str(grid)]) == 0
    assert main(sample + ["--out", str(folder)]) == 0
    for out in (grid, folder):
        capsys.readouterr()
        assert main(sample + ["--out", str(out)]) == 1
        assert "--overwrite" in capsys.readouterr().err
        assert main(sample + ["--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png"]
    js.write_text("{}")
    assert main(["eval", "--ckpt", str(tiny_run), "--n", "16", "--metrics", "fid", "--json", str(js)]) == 1
    assert js.read_text() == "{}"
    assert main(["eval", "--ckpt", str(tiny_run), "--n", "16", "--metrics", "fid", "--json", str(js),
                 "--overwrite"]) == 0
    assert "fid" in json.loads(js.read_text())
