"""A user's mistakes and hostile inputs end in one ``error:`` line, never a traceback or a hang.

Issue 11: every case a careless or hostile user tried is here, run through the CLI as a
user runs it. Each expects exactly one line starting with ``error:``, no traceback and a
non-zero exit code (the codes are documented in docs/errors.md); values that are
legitimately accepted are tested for their documented meaning instead. The hang cases
(nested YAML aliases, image folders with symlink loops) run in a subprocess with a
timeout, so a regression fails in seconds instead of hanging the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ecar import cli
from ecar.cli import EXIT_BUG, EXIT_FAIL, EXIT_USAGE, main
from ecar.config import ConfigError, load_config
from ecar.data import build_dataset
from ecar.errors import MAX_SHOWN, shown
from ecar.schema import MAX_YAML_NODES, load_yaml_text
from ecar.serialization import load_refusal

ROOT = Path(__file__).resolve().parents[1]
DIT = str(ROOT / "configs" / "digits_dit.yaml")
ECAR = str(ROOT / "configs" / "digits_ecar.yaml")
FAST = ["model.hidden=32", "model.depth=1", "model.heads=2", "train.batch_size=8",
        "train.tensorboard=false", "train.max_steps=2", "train.warmup_steps=1"]
ECAR_FAST = FAST + ["model.head_width=32", "model.head_depth=1", "sample.stage_steps=null",
                    "sample.steps=2"]
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def one_error(code: int, err: str, expected: int | tuple[int, ...] = EXIT_USAGE, match: str = "") -> str:
    """Assert the CLI's one error path: exit code, exactly one ``error:`` line, no traceback;
    returns that line."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    assert code in (expected if isinstance(expected, tuple) else (expected,)), (code, err)
    assert match.lower() in lines[0].lower(), lines[0]
    assert len(lines[0]) < 2100
    return lines[0]


def run(capsys, *argv: str) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own refusals (a list entry that is not a number)
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("errors") / "dit"
    assert main(["train", "--quiet", "--config", DIT, "--out", str(out), *FAST]) == 0
    return out


@pytest.fixture(scope="module")
def ecar_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("errors") / "ecar"
    assert main(["train", "--quiet", "--config", ECAR, "--out", str(out), *ECAR_FAST]) == 0
    return out


# --------------------------------------------------------------------------- config files


def _deep(n: int) -> str:
    return "train:\n  lr: " + "[" * n + "]" * n + "\n"


CONFIG_FILES = {
    "top level a list": b"- train\n- model\n",
    "top level a scalar": b"just some words\n",
    "nested 20000 deep": ("[" * 20000 + "]" * 20000).encode(),
    "nested 20000 deep in a field": _deep(20000).encode(),
    "nested mappings 5000 deep": ("a: " * 5000 + "1\n").encode(),
    "not utf-8": "train:\n  device: caf\u00e9\n".encode("latin-1"),
    "binary": bytes(range(256)) * 8,
    "section a string": b"train: fast\n",
    "model section a string": b"model: big\n",
    "sample section a list": b"sample: [1, 2]\n",
    "recursive alias": b"train: &a {lr: *a}\n",
    "int over the digit limit": b"train:\n  max_steps: " + b"9" * 5000 + b"\n",
    "impossible date": b"train:\n  lr: 2024-13-45\n",
    "int beyond int64": b"train:\n  max_steps: 100000000000000000000000\n",
    "unhashable key": b"train:\n  ? [a, b]\n  : 1\n",
}


@pytest.mark.parametrize("name", list(CONFIG_FILES))
def test_bad_config_file_is_one_error_line(tmp_path, capsys, name):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(CONFIG_FILES[name])
    code, err = run(capsys, "train", "--config", path, "--out", tmp_path / "run")
    one_error(code, err)
    assert not (tmp_path / "run").exists()


def test_config_file_messages_say_what_is_wrong(tmp_path):
    def message(data: bytes) -> str:
        path = tmp_path / "r.yaml"
        path.write_bytes(data)
        with pytest.raises(ConfigError) as e:
            load_config(path)
        return str(e.value)

    assert "top level is a list" in message(CONFIG_FILES["top level a list"])
    assert "nested more than" in message(CONFIG_FILES["nested 20000 deep"])
    assert "UTF-8" in message(CONFIG_FILES["not utf-8"])
    assert "binary" in message(CONFIG_FILES["binary"])
    assert "section 'train' must be a mapping" in message(CONFIG_FILES["section a string"])
    assert "section 'model' must be a mapping" in message(CONFIG_FILES["model section a string"])
    assert "contains it" in message(CONFIG_FILES["recursive alias"])


def test_hostile_config_inside_a_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "model.safetensors").write_bytes(b"not weights")
    (run_dir / "config.yaml").write_text("[" * 20000 + "]" * 20000)
    code, err = run(capsys, "info", "--ckpt", run_dir)
    one_error(code, err, expected=(EXIT_FAIL, EXIT_USAGE))


# --------------------------------------------------------------------------- config values

BAD_OVERRIDES = {
    "train.lr=nan": "finite",
    "train.lr=-1": "train.lr",
    "train.lr=.inf": "finite",
    "train.log_every=0": "train.log_every",
    "data.num_workers=-1": "data.num_workers",
    "train.device=bogus": "train.device",
    "train.ema_decay=nan": "finite",
    "train.ema_decay=1.5": "train.ema_decay",
    "train.grad_clip=nan": "finite",
    "train.max_minutes=nan": "finite",
    "model.hidden=0": "model.hidden",
    "train.batch_size=10": "grad_accum",  # with train.grad_accum=3 below
    "train.seed=-1": "train.seed",
    "flow.logit_std=0": "flow.logit_std",
    "autoencoder.scale=0": "autoencoder.scale",
    "sample.cfg=nan": "finite",
    "data.resolution=15": "model.patch",  # digits at 15 px: a latent of 15, patch 4
    "model.patch=3": "model.patch",       # digits at 16 px
    "train.lr=" + "x" * 100_000: "train.lr",  # a long value is quoted, cut short
}


@pytest.mark.parametrize("override", list(BAD_OVERRIDES), ids=lambda o: o[:40])
def test_bad_config_value_is_one_error_line(tmp_path, capsys, override):
    extra = ["train.grad_accum=3"] if override.startswith("train.batch_size") else []
    code, err = run(capsys, "train", "--quiet", "--config", DIT, "--out", tmp_path / "run",
                    *FAST, *extra, override)
    line = one_error(code, err, match=BAD_OVERRIDES[override])
    assert len(line) < 600


ECAR_OVERRIDES = {  # the recipe: digits (16 px), patch 4, so a 4×4 token grid and 3 stages
    "model.stages=[1,3,4]": "model.stages",    # 3 does not divide 4
    "model.stages=[1,2] model.stage_weights=null model.windows=null": "full token grid",
    "model.stages=[4,2,1]": "model.stages",
    "model.windows=[0.5]": "model.windows",    # 3 stages need 2 window ends
    "model.windows=[0.9,0.5]": "model.windows",
    "model.windows=[0.5,1.5]": "model.windows",
    "model.stage_weights=[1,1]": "stage_weights",
    "model.head_width=0": "model.head_width",
    "data.resolution=24": "power of two",      # grid 6: the default stages cannot reach it
}


@pytest.mark.parametrize("overrides", list(ECAR_OVERRIDES))
def test_stages_and_windows_the_model_would_reject(tmp_path, capsys, overrides):
    code, err = run(capsys, "train", "--quiet", "--config", ECAR, "--out", tmp_path / "run",
                    *ECAR_FAST, *overrides.split())
    one_error(code, err, match=ECAR_OVERRIDES[overrides])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda(tmp_path, capsys):
    code, err = run(capsys, "train", "--quiet", "--config", DIT, "--out", tmp_path / "run",
                    *FAST, "train.device=cuda")
    one_error(code, err, match="CUDA is not available")


def test_accepted_edge_values_have_their_documented_meaning(tmp_path):
    """0 means "off" for the optional budgets and intervals (docs/errors.md)."""
    cfg = load_config(DIT, ["train.grad_clip=0", "train.max_minutes=0", "train.ema_decay=0",
                            "sample.cfg=0", "train.sample_every=0", "train.ckpt_every=0"])
    assert (cfg.train.grad_clip, cfg.train.max_minutes, cfg.train.ema_decay, cfg.sample.cfg) == (0, 0, 0, 0)


# --------------------------------------------------------------------------- --out paths


def test_train_out_that_is_a_file_or_below_one(tmp_path, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine\n")
    for out in (afile, afile / "run"):
        code, err = run(capsys, "train", "--quiet", "--config", DIT, "--out", out, *FAST)
        one_error(code, err, expected=(EXIT_FAIL, EXIT_USAGE))
    assert afile.read_text() == "mine\n"


@pytest.mark.skipif(AS_ROOT, reason="root may write into a read-only directory, so there is no error to see")
def test_out_in_a_read_only_directory(tmp_path, capsys, dit_run):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, err = run(capsys, "train", "--quiet", "--config", DIT, "--out", locked / "run", *FAST)
        one_error(code, err, expected=(EXIT_FAIL, EXIT_USAGE), match="permission")
        code, err = run(capsys, "sample", "--ckpt", dit_run, "--n", "2", "--out", locked / "g.png")
        one_error(code, err, expected=(EXIT_FAIL, EXIT_USAGE), match="permission")
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="no sysfs here")
def test_out_where_not_even_root_can_write(capsys, dit_run):
    """The read-only case for every user, root included: sysfs refuses new folders."""
    code, err = run(capsys, "train", "--quiet", "--config", DIT, "--out", "/sys/ecar-test-run", *FAST)
    one_error(code, err, expected=(EXIT_FAIL, EXIT_USAGE))
    code, err = run(capsys, "sample", "--ckpt", dit_run, "--n", "2", "--out", "/sys/ecar-test/g.png")
    one_error(code, err, expected=(EXIT_FAIL, EXIT_USAGE))
    assert not Path("/sys/ecar-test-run").exists()


def test_sample_out_below_a_file_and_in_a_missing_path(tmp_path, capsys, dit_run):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine\n")
    code, err = run(capsys, "sample", "--ckpt", dit_run, "--n", "2", "--out", afile / "g.png")
    one_error(code, err, expected=(EXIT_FAIL, EXIT_USAGE))
    # a missing path is legitimate: its folders are created (documented in docs/errors.md)
    deep = tmp_path / "new" / "folders" / "g.png"
    assert main(["sample", "--ckpt", str(dit_run), "--n", "2", "--out", str(deep)]) == 0
    assert deep.is_file()


# --------------------------------------------------------------------------- CLI flags

SAMPLE_FLAGS = {
    ("--batch-size", "0"): "--batch-size",
    ("--nrow", "-1"): "--nrow",
    ("--n", "0"): "--n",
    ("--n", str(10**15)): "GiB",
    ("--device", "bogus"): "--device",
    ("--cfg", "nan"): "finite",
    ("--cfg", "inf"): "finite",
    ("--cfg", "-1"): "sample.cfg",
    ("--steps", "0"): "sample.steps",
    ("--seed", "-1"): "--seed",
    ("--classes", "3,99"): "out of range",
}


@pytest.mark.parametrize("flag", list(SAMPLE_FLAGS), ids=lambda f: " ".join(f))
def test_bad_sample_flag_is_one_error_line(tmp_path, capsys, dit_run, flag):
    started = time.monotonic()
    code, err = run(capsys, "sample", "--ckpt", dit_run, "--out", tmp_path / "g.png", *flag)
    one_error(code, err, match=SAMPLE_FLAGS[flag])
    assert time.monotonic() - started < 30  # a huge --n is refused up front, not after a minute
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("steps,match", [("0,0,0", "stage_steps"), ("5,5", "3 entries")])
def test_bad_stage_steps(tmp_path, capsys, ecar_run, steps, match):
    code, err = run(capsys, "sample", "--ckpt", ecar_run, "--out", tmp_path / "g.png", "--stage-steps", steps)
    one_error(code, err, match=match)


@pytest.mark.parametrize("argv,match", [
    (["demo", "--out", "{out}", "--minutes", "nan"], "--minutes"),
    (["demo", "--out", "{out}", "--minutes", "inf"], "--minutes"),
    (["demo", "--out", "{out}", "--minutes", "0"], "--minutes"),
    (["bench", "--out", "{out}", "--configs", DIT, "--train-minutes", "nan"], "--train-minutes"),
    (["eval", "--ckpt", "{out}", "--batch-size", "0"], "--batch-size"),
    (["eval", "--ckpt", "{out}", "--device", "cuda:x"], "--device"),
])
def test_bad_flags_of_other_commands(tmp_path, capsys, argv, match):
    out = tmp_path / "out"
    code, err = run(capsys, *[str(out) if a == "{out}" else a for a in argv])
    one_error(code, err, match=match)
    assert not out.exists()  # refused before anything was written


# --------------------------------------------------------------------------- the error path


def test_argparse_errors_have_the_same_format(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--ckpt", "x", "--out", "y.png", "--n", "lots"])
    one_error(e.value.code, capsys.readouterr().err, match="--n")
    with pytest.raises(SystemExit) as e:
        main(["sample", "--ckpt", "x", "--out", "y.png", "--sampler", "rk45"])
    one_error(e.value.code, capsys.readouterr().err, match="--sampler")


def test_unexpected_error_keeps_its_traceback_and_says_how_to_report(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("an internal invariant broke")

    monkeypatch.setitem(cli.COMMANDS, "info", broken)
    code, err = run(capsys, "info", "--ckpt", "x")
    assert code == EXIT_BUG
    assert "Traceback" in err and "an internal invariant broke" in err
    assert "report" in err and not any(line.startswith("error:") for line in err.splitlines())


def test_debug_shows_the_traceback_of_an_expected_error(tmp_path, capsys):
    for argv in (["--debug", "train"], ["train", "--debug"]):
        code, err = run(capsys, *argv, "--config", DIT, "--out", tmp_path / "r", "train.lr=nan")
        assert code == EXIT_USAGE and "Traceback" in err
        assert sum(line.startswith("error:") for line in err.splitlines()) == 1
    code, err = run(capsys, "train", "--config", DIT, "--out", tmp_path / "r", "train.lr=nan")
    one_error(code, err)


def test_exit_codes_are_documented():
    doc = (ROOT / "docs" / "errors.md").read_text()
    for code in cli.EXIT_CODES:
        assert f"| {code} |" in doc


def test_refused_pickle_never_suggests_unsafe_loading(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this would run on load",))

    path = tmp_path / "state.pt"
    torch.save({"step": 1, "x": Payload()}, path)
    with pytest.raises(Exception) as e:
        torch.load(path, map_location="cpu", weights_only=True)
    text = load_refusal(e.value)
    assert "weights_only" not in text and "safe_globals" not in text and "add_safe" not in text
    assert "refused" in text and "trust" in text


# --------------------------------------------------------------------------- hangs


def _billion_laughs() -> str:
    """Nine levels of nine aliases inside a typed field: ~400 bytes, 9⁹ values expanded."""
    levels = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "train:\n  lr: [" + ", ".join(levels) + "]\n"


def _cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "ecar", *argv], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_billion_laughs_is_refused_without_expanding(tmp_path):
    doc = _billion_laughs()
    assert len(doc) < 500
    path = tmp_path / "laughs.yaml"
    path.write_text(doc)
    proc = _cli("train", "--config", str(path), "--out", str(tmp_path / "run"))
    one_error(proc.returncode, proc.stderr, match="aliases")
    assert len(proc.stderr) < 2000
    # below the expansion bound the document loads, and a message quotes a bounded prefix
    small = load_yaml_text("x: &a [1, 2]\ny: [*a, *a]\n", "test")
    assert small == {"x": [1, 2], "y": [[1, 2], [1, 2]]}
    shared = [1] * 9
    for _ in range(12):  # 9^13 values if expanded
        shared = [shared] * 9
    assert len(shown(shared)) <= MAX_SHOWN
    assert MAX_YAML_NODES < 9**9


def _image(path: Path, value: int) -> None:
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_image_folder_with_symlink_loops_is_scanned_in_seconds(tmp_path):
    root = tmp_path / "imgs"
    cls = root / "cats"
    (cls / "sub").mkdir(parents=True)
    for i in range(3):
        _image(cls / f"{i}.png", 40 * i)
    os.symlink("..", cls / "sub" / "up1")  # two links back to the class folder: exponential
    os.symlink("..", cls / "sub" / "up2")  # for a walk that follows links blindly
    os.symlink("../..", cls / "sub" / "root")  # and one to the dataset root
    # the scan must end (then the patch error of a 8 px latent / patch 3 is the one error line)
    started = time.monotonic()
    proc = _cli("train", "--config", DIT, "--out", str(tmp_path / "run"), *FAST,
                f"data.name=imagefolder:{root}", "data.resolution=8", "model.patch=3", timeout=120)
    one_error(proc.returncode, proc.stderr, match="model.patch")
    assert time.monotonic() - started < 120
    assert len(build_dataset(f"imagefolder:{root}", resolution=8)) == 3


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_a_symlink_loop_does_not_count_an_image_twice(tmp_path):
    cls = tmp_path / "imgs" / "dogs"
    cls.mkdir(parents=True)
    _image(cls / "a.png", 10)
    _image(cls / "b.png", 200)
    os.symlink(".", cls / "again")  # dogs/again/again/... is dogs
    os.symlink("a.png", cls / "a_link.png")  # the same file under a second name
    ds = build_dataset(f"imagefolder:{tmp_path / 'imgs'}", resolution=8)
    assert len(ds) == 2
    assert sorted(p.name for p in ds.files) == ["a.png", "b.png"]


def test_yaml_in_an_override_is_bounded_too():
    deep = "train.lr=" + "[" * 5000 + "]" * 5000
    with pytest.raises(ConfigError, match="nested"):
        load_config(None, [deep])
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lr=" + _billion_laughs().split("lr: ", 1)[1].strip()])
    assert len(str(e.value)) < 1000


def test_every_flag_a_command_declares_is_read(capsys):
    """No silent nonsense: a flag a command accepts but never reads (``ecar sample`` once took
    --seeds and --reference-split from eval's parser and ignored them) is an error instead."""
    import argparse
    import inspect

    from ecar.cli import COMMANDS, build_parser
    from ecar.methods import sampler_flags

    derived = {f.dest for f in sampler_flags()}  # read together by flag_overrides(args)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    unread = []
    for name, parser in sub.choices.items():
        source = inspect.getsource(COMMANDS[name])
        for action in parser._actions:
            dest = action.dest
            if dest in ("help", "debug", "command") or (dest in derived and "flag_overrides(args)" in source):
                continue
            if f"args.{dest}" not in source and f'"{dest}"' not in source:
                unread.append(f"{name} {action.option_strings or dest}")
    assert not unread, f"flags declared but never read: {unread}"
    with pytest.raises(SystemExit) as e:
        main(["sample", "--ckpt", "x", "--out", "g.png", "--seeds", "0,1"])
    assert e.value.code == EXIT_USAGE and "--seeds" in capsys.readouterr().err


# --------------------------------------------------------------------------- issue 30: lists, YAML, --no-ema


def _scalar_twin(capsys, argv: list[str], flag: str, value: str) -> str:
    """The error line the scalar form of a list flag gives for ``value``."""
    code, err = run(capsys, *argv, f"{flag}={value}")
    return one_error(code, err, match=f"={shown(int(value)) if value.isdigit() else value} is not valid")


@pytest.mark.parametrize("seeds,bad,index", [("-1,2", "-1", 0), ("0,1,-5", "-5", 2),
                                             ("3," + str(2**63), str(2**63), 1),
                                             ("0," + "7" * 400, shown(int("7" * 400)), 1)])
def test_a_bad_seed_inside_a_list_is_refused_like_seed(tmp_path, capsys, dit_run, seeds, bad, index):
    """`ecar eval --seeds=-1,2` exited 0 with a FID std of 3676: each entry of a seed list now
    meets --seed's rule, with --seed's message, before any sampling or file."""
    out = tmp_path / "eval.json"
    base = ["eval", "--ckpt", dit_run, "--n", "4", "--metrics", "fid", "--json", out]
    code, err = run(capsys, *base, f"--seeds={seeds}")
    line = one_error(code, err, match=f"--seeds[{index}]={bad} is not valid")
    value = seeds.split(",")[index]
    assert line == _scalar_twin(capsys, base, "--seed", value).replace("--seed=", f"--seeds[{index}]=")
    assert not out.exists()


@pytest.mark.parametrize("flags,match", [
    (["--seeds=-1"], "--seeds[0]=-1 is not valid: it must be in [0, 2**63)"),
    (["--seeds=0,x"], "--seeds"),
    (["--sweep=1,-0.5"], "--sweep[1]=-0.5 is not valid: it must be > 0"),
    (["--sweep=0"], "--sweep[0]=0.0 is not valid"),
    (["--sweep=1,nan"], "--sweep[1]=nan is not valid: it must be a finite number > 0"),
    (["--sweep=inf"], "--sweep[0]=inf is not valid: it must be a finite number > 0"),
    (["--samplers=euler,rk45"], "--samplers[1]='rk45' is not valid; choose one of: euler, heun"),
])
def test_bench_list_flags_are_checked_entry_by_entry_before_any_work(tmp_path, capsys, dit_run, flags, match):
    out = tmp_path / "bench"
    defaults = {"--seeds": "0", "--sweep": "1", "--samplers": "euler"}
    given = {f.split("=")[0] for f in flags}
    rest = [f"{k}={v}" for k, v in defaults.items() if k not in given]
    code, err = run(capsys, "bench", "--ckpts", dit_run, "--n-eval", "4", "--out", out, *rest, *flags)
    one_error(code, err, match=match)
    assert not out.exists()


def test_bench_samples_a_run_with_its_recipes_new_sampler(tmp_path, capsys, ecar_run):
    """`--ckpts RUN=RECIPE` re-benches a trained run with the recipe's (changed) sample section,
    and refuses a recipe whose model is not the run's before any evaluation."""
    out = tmp_path / "bench"
    flags = ["--n-eval", "4", "--sweep", "1", "--samplers", "euler", "--seeds", "0", "--quiet"]
    model = [o for o in ECAR_FAST if o.startswith("model.")]
    code, err = run(capsys, "bench", "--ckpts", f"{ecar_run}={ECAR}", "--out", out, *flags,
                    *model, "sample.stage_steps=[3,1,1]", "sample.cfg=1.5")
    assert code == 0, err
    shipped = json.loads((out / "bench.json").read_text())["rows"][0]
    assert shipped["setting"] == "shipped" and shipped["steps"] == [3, 1, 1] and shipped["cfg"] == 1.5
    other = tmp_path / "other"
    code, err = run(capsys, "bench", "--ckpts", f"{ecar_run}={ECAR}", "--out", other, *flags)
    one_error(code, err, expected=EXIT_FAIL, match="describes another model")
    assert not (other / "bench.json").exists()
    code, err = run(capsys, "bench", "--ckpts", f"{ecar_run}={tmp_path / 'none.yaml'}", "--out", other, *flags)
    one_error(code, err, expected=(EXIT_FAIL, EXIT_USAGE), match="none.yaml")


@pytest.mark.parametrize("classes,match", [("1,-3", "--classes[1]=-3 is not valid: it must be >= 0"),
                                           ("1,30", "classes [30] are out of range"),
                                           ("9" * 5000, "--classes: expected comma-separated integers")])
def test_bad_class_lists(tmp_path, capsys, dit_run, classes, match):
    code, err = run(capsys, "sample", "--ckpt", dit_run, "--out", tmp_path / "g.png", f"--classes={classes}")
    line = one_error(code, err, match=match)
    assert len(line) < 400  # a 5,000-digit entry is quoted cut short
    assert not (tmp_path / "g.png").exists()


def test_stage_steps_entries_are_checked_like_steps(tmp_path, capsys, ecar_run):
    base = ["sample", "--ckpt", ecar_run, "--out", tmp_path / "g.png"]
    scalar = _scalar_twin(capsys, base, "--steps", "0")
    assert "sample.steps=0 is not valid: it must be >= 1" in scalar
    code, err = run(capsys, *base, "--stage-steps=2,0,2")
    assert one_error(code, err) == scalar.replace("sample.steps=", "sample.stage_steps[1]=")


@pytest.mark.parametrize("override,match", [
    ("model.stages=[1,-2,4]", "model.stages[1]=-2 is not valid: it must be >= 1"),
    ("model.windows=[0.5,1.5]", "model.windows[1]=1.5 is not valid: it must be in (0, 1)"),
    ("model.windows=[0.5,.nan]", "model.windows[1]: expected a finite number"),
    ("model.stage_weights=[1,-1,1]", "model.stage_weights[1]=-1.0 is not valid: it must be >= 0"),
    ("sample.stage_steps=[2,2,0]", "sample.stage_steps[2]=0 is not valid: it must be >= 1"),
    ("sample.stage_steps=[2,2,100000000000000000000]", "sample.stage_steps[2]: "),
    ("sample.cfg_interval=[0.1,7]", "sample.cfg_interval[1]=7.0 is not valid: it must be in [0, 1]"),
])
def test_config_list_fields_name_the_bad_entry(tmp_path, capsys, override, match):
    code, err = run(capsys, "train", "--config", ECAR, "--out", tmp_path / "run", override)
    one_error(code, err, match=match)
    assert not (tmp_path / "run").exists()


YAML_ERRORS = {
    "unclosed flow list": (b"train:\n  lr: [1, 2\n  max_steps: 3\n", "line 3, column 12"),
    "mapping in a value": (b"train:\n  lr: 1\n   x: 2\n", "line 3, column 5"),
    "unclosed quote": (b'train:\n  device: "cpu\n', "line 3, column 1"),
    "tab indentation": (b"train:\n\tlr: 1\n", "line 2, column 1"),
    "python tag": (b"train: !!python/object:os.system x\n", "line 1, column 8"),
}


@pytest.mark.parametrize("name", list(YAML_ERRORS))
def test_yaml_syntax_errors_are_one_line(tmp_path, capsys, name):
    """PyYAML's message spans five lines with a caret; the CLI prints one: the file, line and
    column, what was expected, and where the construct it was reading began."""
    data, where = YAML_ERRORS[name]
    path = tmp_path / "recipe.yaml"
    path.write_bytes(data)
    code, err = run(capsys, "train", "--config", path, "--out", tmp_path / "run")
    line = one_error(code, err, match=where)
    assert err.strip() == line, err  # nothing but the one line
    assert f"config file '{path}' is not valid YAML: {where}: " in line
    assert not (tmp_path / "run").exists()
    code, err = run(capsys, "train", "--config", DIT, "--out", tmp_path / "run", "train.lr=[1,")
    assert err.strip() == one_error(code, err, match="line 1, column 4")


def _rewrite_ema(run_dir: Path, how: str) -> None:
    """Make the run's EMA file what an earlier version could leave: a step behind the model
    (its weights scrambled, so using them would show), or not a safetensors file at all."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    (ema,) = run_dir.rglob("ema.safetensors")
    if how == "damaged":
        ema.write_bytes(b"\0" * 100)
        return
    with safe_open(str(ema), framework="pt") as f:
        meta = dict(f.metadata())
    inner = json.loads(meta["ecar"])
    inner["step"] = str(int(inner["step"]) - 1)
    meta["ecar"] = json.dumps(inner)
    save_file({k: torch.randn_like(v) * 5 for k, v in load_file(str(ema)).items()}, str(ema), metadata=meta)


@pytest.mark.parametrize("how", ["a step behind", "damaged"])
def test_no_ema_loads_only_the_model_weights(tmp_path, capsys, dit_run, how):
    """`ecar sample --no-ema` refused a run whose EMA file was a step behind its model file,
    although the weights it asked for were intact: it now reads only model.safetensors and
    samples exactly what the intact run gives; without --no-ema the EMA is still checked."""
    import shutil

    stale = tmp_path / "run"
    shutil.copytree(dit_run, stale)
    _rewrite_ema(stale, how)
    argv = ["sample", "--n", "4", "--seed", "3", "--no-ema"]
    assert main([*argv, "--ckpt", str(stale), "--out", str(tmp_path / "a.png")]) == 0
    assert main([*argv, "--ckpt", str(dit_run), "--out", str(tmp_path / "b.png")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / f"{x}.png")) for x in "ab")
    assert a.std() > 0 and np.array_equal(a, b)
    capsys.readouterr()
    code, err = run(capsys, "sample", "--n", "4", "--ckpt", stale, "--out", tmp_path / "c.png")
    one_error(code, err, expected=EXIT_FAIL, match="disagree" if how == "a step behind" else "damaged")
    assert not (tmp_path / "c.png").exists()
