"""The Python API (issue 26): ``ecar.load`` -> ``ecar.Pipeline`` -> ``Output`` for every method;
the README's lines run as written; settings refused with the CLI's messages; speculative
decoding through ``with_draft``; and the pipeline as the one door to generation (nothing else
calls the low-level load and generate functions)."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

import ecar
from ecar.cli import main
from ecar.config import load_config
from ecar.errors import ConfigError
from ecar.eval.cost import count_flops
from ecar.methods import METHODS
from ecar.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.max_steps=2", "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1",
        "train.tensorboard=false", "model.hidden=32", "model.heads=2", "model.depth=1"]
HEAD = ["model.head_width=32", "model.head_depth=1"]
PER_METHOD = {"dit": ["sample.steps=2"], "ecar": [*HEAD, "sample.stage_steps=[2,1,1]"],
              "flowar": [*HEAD, "sample.stage_steps=[1,1,1]"], "mar": [*HEAD, "sample.steps=2", "sample.iterations=2"],
              "ar": [*HEAD, "sample.steps=2"], "xar": ["sample.steps=2"]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A 2-step digits run of every registered method (its recipe, tiny), and an ``ar`` draft."""
    root = tmp_path_factory.mktemp("pipeline-runs")
    out = {}
    for name in METHODS:
        cfg = load_config(ROOT / "configs" / f"digits_{name}.yaml", [*TINY, *PER_METHOD[name]])
        train(cfg, root / name, progress=False)
        out[name] = root / name
    draft = load_config(ROOT / "configs" / "digits_ar.yaml", [*TINY, *PER_METHOD["ar"], "model.hidden=16",
                                                               "model.head_width=16", "train.seed=1"])
    train(draft, root / "ar_draft", progress=False)
    out["ar_draft"] = root / "ar_draft"
    return out


# --------------------------------------------------------------------------- the README


def readme_api_lines() -> list[str]:
    """The Python block under the README's ``## In Python`` heading, as written there."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## In Python", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, "no ```python block under the README's '## In Python' heading"
    return block.group(1).rstrip("\n").split("\n")


def test_the_readme_python_api_runs_as_written(runs, tmp_path, monkeypatch):
    """Acceptance 1: at most six lines, run exactly as the README shows them, in a folder where
    ``ecar-demo/run`` is a tiny trained E-CAR run (what ``ecar demo`` writes)."""
    lines = readme_api_lines()
    assert 1 <= len(lines) <= 6, lines
    (tmp_path / "ecar-demo").mkdir()
    os.symlink(runs["ecar"], tmp_path / "ecar-demo" / "run")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile("\n".join(lines), "README.md", "exec"), scope)  # noqa: S102 - the README's own lines
    out, stages = scope["out"], scope["stages"]
    assert len(out.images) == 8 and all(isinstance(im, Image.Image) for im in out.images)
    assert {(im.size, im.mode) for im in out.images} == {((16, 16), "L")}
    assert out.tensor.shape == (8, 1, 16, 16) and bool((out.labels == 3).all())
    saved = np.asarray(Image.open(tmp_path / "dress.png"))  # class 3 of fashion-mini
    assert np.array_equal(saved, np.asarray(out.images[0]))
    assert out.gflops_per_image > 0 and out.seconds_per_image > 0
    assert [s.shape[-1] for s in stages] == [4, 8, 16]  # the three stages of the digits pyramid
    again = ecar.load(runs["ecar"])(n=8, classes=[3], seed=0, cfg=2.5)
    assert torch.equal(again.tensor, out.tensor)  # same seed, same images


# --------------------------------------------------------------------------- every method


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_loads_and_generates(runs, name):
    pipe = ecar.load(runs[name], device="cpu")
    assert isinstance(pipe, ecar.Pipeline) and pipe.method.name == name and pipe.step == 2
    assert pipe.params == sum(p.numel() for p in pipe.model.parameters()) > 0
    out = pipe(n=5, classes=[1, 7], seed=4)
    assert out.tensor.shape == (5, 1, 16, 16) and out.labels.tolist() == [1, 7, 1, 7, 1]
    assert bool(torch.isfinite(out.tensor).all())
    assert [im.size for im in out.images] == [(16, 16)] * 5
    assert out.sample == pipe.sample and out.seed == 4 and out.stages is None and out.speculative is None
    assert torch.equal(pipe(n=5, classes=[1, 7], seed=4).tensor, out.tensor)
    assert not torch.equal(pipe(n=5, classes=[1, 7], seed=5).tensor, out.tensor)
    # GFLOPs: one sampling call of one image (class 0), counted in latent space
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        pipe.method.generate(pipe.model, pipe.sample, torch.tensor([0]), torch.Generator().manual_seed(0))
    assert out.gflops_per_image == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-12)
    assert out.gflops_per_image > 0 and count_flops(pipe, pipe.sample, batch=1) == out.gflops_per_image
    # stages: one entry per unit, the last the images themselves
    st = pipe.stages(n=5, classes=[1, 7], seed=4)
    assert st.stages is not None and len(st.stages) == pipe.units >= 1
    assert torch.equal(st.tensor, out.tensor) and torch.equal(st.stages[-1], out.tensor)


def test_settings_are_keyword_arguments_and_change_the_images(runs):
    pipe = ecar.load(runs["ecar"])
    a = pipe(n=4, seed=0)
    b = pipe(n=4, seed=0, stage_steps=[1, 1, 1], cfg=3.0)
    assert b.sample.stage_steps == [1, 1, 1] and b.sample.cfg == 3.0 and pipe.sample.stage_steps == [2, 1, 1]
    assert not torch.equal(a.tensor, b.tensor)
    assert b.gflops_per_image < a.gflops_per_image  # fewer steps, fewer FLOPs
    assert torch.equal(pipe(n=4, seed=0, sample=b.sample).tensor, b.tensor)


@pytest.mark.parametrize("flags,settings", [
    (["--stage-steps", "2,2"], {"stage_steps": [2, 2]}),    # a setting of another method
    (["--steps", "0"], {"steps": 0}),                      # out of range
    (["--cfg-interval", "0.8,0.2"], {"cfg_interval": [0.8, 0.2]}),  # entries out of order
])
def test_settings_are_refused_with_the_cli_messages(runs, tmp_path, capsys, flags, settings):
    """A bad setting is a ConfigError whose text is what ``ecar sample`` prints for the flag
    (the same validation)."""
    pipe = ecar.load(runs["dit"])
    with pytest.raises(ConfigError) as e:
        pipe(n=1, **settings)
    assert main(["sample", "--ckpt", str(runs["dit"]), "--out", str(tmp_path / "g.png"), *flags]) == 2
    assert f"error: {e.value}" in capsys.readouterr().err


def test_bad_calls_are_clear_errors(runs):
    pipe = ecar.load(runs["dit"])
    with pytest.raises(ValueError, match="out of range: this model has classes 0..9"):
        pipe(n=2, classes=[10])
    with pytest.raises(ConfigError, match="n must be >= 1"):
        pipe(n=0)
    with pytest.raises(ecar.checkpoint.CheckpointError):
        ecar.load(runs["dit"].parent / "missing")


# --------------------------------------------------------------------------- speculative decoding


def test_with_draft_samples_by_speculative_decoding(runs):
    target, draft = ecar.load(runs["ar"]), ecar.load(runs["ar_draft"], ema=False)
    drafted = target.with_draft(draft)
    assert drafted.draft is draft and target.draft is None
    out = drafted(n=3, seed=1, gamma=2)
    assert out.tensor.shape == (3, 1, 16, 16) and out.speculative is not None
    assert out.speculative["tokens"] == 3 * target.model.num_tokens and 0 <= out.speculative["acceptance_rate"] <= 1
    assert out.gflops_per_image is None  # the work depends on what the target accepts
    same = target.with_draft(target)(n=3, seed=1, gamma=2)  # a draft equal to the target accepts everything
    assert same.speculative["acceptance_rate"] == 1.0
    with pytest.raises(ConfigError, match="no per-unit results"):
        drafted.stages(n=2)
    with pytest.raises(ConfigError, match="Gaussian chain"):
        drafted(n=2, sampler="euler")  # an ODE has no path density


def test_a_method_that_cannot_be_drafted_says_so(runs):
    dit = ecar.load(runs["dit"])
    with pytest.raises(ConfigError, match="method dit cannot be drafted.*those that can: ar"):
        dit.with_draft(dit)
    with pytest.raises(ConfigError, match="differ in method"):
        ecar.load(runs["ar"]).with_draft(dit)


# --------------------------------------------------------------------------- the one door


LOW_LEVEL_CALLS = {
    "load_for_inference", "generate_images", "sample_batches", "generate_single_unit", "generate_multistage",
    "generate_masked", "generate_causal", "generate_next_x", "generate_speculative",
}
"""Functions that load a network for inference or run a generation loop below the pipeline."""
LOW_LEVEL_METHODS = {"generate", "speculative"}
"""The method protocol's generation calls (``method.generate``, ``drafting.speculative``)."""
CHECKPOINT_READS = {"load_checkpoint", "load_state_into"}
"""Reading weights: the pipeline (inference), checkpoint.py itself and train/ (resuming a run)."""
BEFORE_THE_PIPELINE = {"benchmarks/refactor_check.py", "benchmarks/plain_before_after.py"}
"""Scripts that run the same code against versions of ecar older than the pipeline (a
before/after comparison), through the one door every version has."""


def low_level_calls(source: str, checkpoint_reads: bool = False) -> list[str]:
    """``name (line)`` of every call of a low-level load or generate function in ``source``."""
    names = LOW_LEVEL_CALLS | (CHECKPOINT_READS if checkpoint_reads else set())
    hits = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if name in names or (isinstance(f, ast.Attribute) and name in LOW_LEVEL_METHODS):
            hits.append(f"{name} (line {node.lineno})")
    return hits


def test_the_scanner_sees_low_level_calls():
    src = ("from ecar.build import load_for_inference\nL = load_for_inference('r', 'cpu')\n"
           "x = METHOD.generate(m, s, y)\ny = m.drafting.speculative(a, b, s, y)\nz = generate_multistage(m, y, s)\n"
           "ck = ckpt.load_checkpoint('r')\n")
    assert low_level_calls(src) == ["load_for_inference (line 2)", "generate (line 3)", "speculative (line 4)",
                                    "generate_multistage (line 5)"]
    assert "load_checkpoint (line 6)" in low_level_calls(src, checkpoint_reads=True)
    assert low_level_calls("out = ecar.load('r')(n=4, seed=0)\nimgs = pipe.stages(n=2)\n") == []


def test_nothing_but_the_pipeline_calls_the_low_level_load_and_generate():
    """Acceptance 2: the CLI, serve, demo, eval, bench, train and the scripts in benchmarks/
    and scripts/ generate through :class:`ecar.Pipeline` only. Below it, methods/ run their
    engine loops (engine/); tests test each layer itself."""
    src = ROOT / "src" / "ecar"
    below = ("pipeline", "methods", "engine")
    files = [p for p in src.rglob("*.py") if p.relative_to(src).parts[0] not in below]
    files += sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))
    hits = []
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        if rel in BEFORE_THE_PIPELINE:
            continue
        reads = not (rel == "src/ecar/checkpoint.py" or rel.startswith("src/ecar/train/"))
        hits += [f"{rel}: {h}" for h in low_level_calls(path.read_text(), checkpoint_reads=reads)]
    assert not hits, "\n".join(hits)
    assert len(files) > 60  # the scan is not vacuous


def test_the_package_says_it_is_typed():
    assert (ROOT / "src" / "ecar" / "py.typed").is_file()
    assert '"py.typed"' in (ROOT / "pyproject.toml").read_text()
