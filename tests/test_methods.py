"""The method protocol and registry: conformance of every method, lookups, each method's own
sampling settings (validation, CLI flags, step scaling), and same-seed equality between the
protocol and the model / engine calls it stands for."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from ecar.autoencoders import IdentityAutoencoder
from ecar.build import LatentSpec, build_model
from ecar.config import ConfigError, load_config
from ecar.engine import StageSampleConfig, generate_multistage, generate_single_unit
from ecar.flow import FlowMatchingObjective, MultistageObjective
from ecar.methods import (
    METHODS,
    Method,
    apply_sample_overrides,
    flag_overrides,
    method_of,
    model_names,
    resolve_sample_config,
    sampler_flags,
    scale_count,
    total_steps,
)
from ecar.methods.dit import DIT, DiTSampleConfig
from ecar.pipeline import Pipeline
from ecar.methods.ecar import ECAR_METHOD, FLOWAR_METHOD, ECARSampleConfig
from ecar.samplers import SAMPLER_NAMES, SampleConfig, guidance_scale

ROOT = Path(__file__).resolve().parents[1]
SPEC = LatentSpec(1, 16, 10)


def _tiny(method: str, *over: str):
    """The first (smallest) entry of ``method`` on 16×16×1 latents (patch 4: E-CAR grids 1, 2,
    4), weights drawn so that no zero-initialised layer makes a comparison vacuous."""
    entry = next(iter(METHODS[method].entries))
    cfg = load_config(None, [f"model.name={entry}", "model.patch=4", "sample.steps=3",
                             "sample.cfg=2.0", *over])
    cfg.data.resolution, cfg.data.channels, cfg.data.num_classes = 16, 1, 10
    torch.manual_seed(0)
    model, m = build_model(cfg, SPEC)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return cfg, model.eval(), m


# --------------------------------------------------------------------------- conformance


def test_registry_holds_dit_ecar_and_flowar_mode():
    # the first three, in this order; methods added later (MAR, xAR …) register after them
    assert list(METHODS)[:3] == ["dit", "ecar", "flowar"]
    assert METHODS["ecar"].family == METHODS["flowar"].family == "ecar" and DIT.family == "dit"


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_implements_the_protocol(name):
    m = METHODS[name]
    assert isinstance(m, Method) and m.name == name
    assert dataclasses.is_dataclass(m.config_cls) and issubclass(m.sample_config_cls, SampleConfig)
    m.sample_config_cls().validate()  # its defaults are valid settings
    assert m.entries, f"method {name} owns no model entry"
    for entry in m.entries:
        assert m.owns(entry) and method_of(entry) is m
        assert method_of(m.entry_config(entry)) is m  # a resolved entry finds its method again
    cfg, model, built_by = _tiny(name)
    assert built_by is m and isinstance(model, nn.Module)
    x, y = torch.randn(2, 1, 16, 16), torch.tensor([1, 7])
    losses = m.objective(model, cfg.flow)(x, y, torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["loss"]) and losses["loss"].dim() == 0
    out = m.generate(model, cfg.sample, y, torch.Generator().manual_seed(0), return_stages=True)
    assert out["latents"].shape == x.shape and torch.isfinite(out["latents"]).all()
    assert torch.equal(out["stages"][-1], out["latents"])
    counts = m.step_counts(model, cfg.sample)
    assert total_steps(counts) >= 1
    doubled = m.scale_steps(model, cfg.sample, 2.0)
    assert type(doubled) is type(cfg.sample) and total_steps(m.step_counts(model, doubled)) > total_steps(counts)


def test_model_entries_are_unique_and_cover_the_registry():
    names = model_names()
    assert len(names) == len(set(names))
    assert names == [n for m in METHODS.values() for n in m.entries]
    assert model_names("flowar") == ["flowar-tiny", "flowar-s"]


def test_method_lookup_by_entry_and_by_config():
    assert method_of("dit-xl/2") is DIT and method_of("ecar-b") is ECAR_METHOD
    assert method_of("flowar-s") is FLOWAR_METHOD
    # FlowAR mode of an ecar-* entry is the flowar method, and the other way round
    assert method_of(load_config("configs/digits_flowar.yaml").model) is FLOWAR_METHOD
    assert method_of(load_config(None, ["model.name=flowar-tiny", "model.mode=ecar"]).model) is ECAR_METHOD
    with pytest.raises(ConfigError, match="Registered models: dit-tiny"):
        method_of("mar-b")
    with pytest.raises(ConfigError, match="no registered method"):
        method_of(object())


# --------------------------------------------------------------------------- sampling settings


def test_each_method_owns_its_sample_settings():
    dit = load_config(ROOT / "configs" / "digits_dit.yaml")
    ecar = load_config(ROOT / "configs" / "digits_ecar.yaml")
    assert type(dit.sample) is DiTSampleConfig and not hasattr(dit.sample, "stage_steps")
    assert type(ecar.sample) is ECARSampleConfig and ecar.sample.stage_steps == [10, 8, 6]


def test_a_setting_of_another_method_is_a_clear_error():
    dit = load_config(ROOT / "configs" / "digits_dit.yaml")
    with pytest.raises(ConfigError) as e:
        apply_sample_overrides(dit.sample, {"stage_steps": [4, 2]})
    msg = str(e.value)
    assert "sample.stage_steps" in msg and "for method dit" in msg and "setting of ecar, flowar" in msg
    assert "Valid keys of 'sample': sampler, steps, cfg, cfg_schedule, cfg_interval, noise_scale" in msg
    with pytest.raises(ConfigError, match="sample.stage_steps"):  # the recipe path says the same
        load_config(ROOT / "configs" / "digits_dit.yaml", ["sample.stage_steps=[4,2]"])
    with pytest.raises(ConfigError, match=r"unknown key 'sample.stepz' for method ecar, flowar\. Valid keys"):
        apply_sample_overrides(load_config(ROOT / "configs" / "digits_ecar.yaml").sample, ["stepz=3"])


def test_null_settings_of_other_methods_count_as_unset():
    """How checkpoints written before the split store them (every old field, null when unset)."""
    cfg = load_config(None, ["model.name=dit-tiny", "sample.stage_steps=null"])
    assert cfg.sample == DiTSampleConfig()
    assert resolve_sample_config(cfg.model, {"stage_steps": None, "steps": 7}).steps == 7
    with pytest.raises(ConfigError, match="stepz"):  # a typo is an error even when null
        resolve_sample_config(cfg.model, {"stepz": None})


def test_sample_overrides_are_validated():
    ecar = load_config(ROOT / "configs" / "digits_ecar.yaml").sample
    new = apply_sample_overrides(ecar, ["sample.sampler=heun", "stage_steps=[3,2,1]", "cfg=null"])
    assert (new.sampler, new.stage_steps, new.cfg) == ("heun", [3, 2, 1], ecar.cfg)
    assert ecar.sampler == "euler"  # a copy
    for bad, match in [({"steps": 0}, "sample.steps=0 is not valid: it must be >= 1"),
                       ({"sampler": "rk4"}, "choose one of"), ({"cfg_interval": [0.5, 0.2]}, "cfg_interval"),
                       ({"stage_steps": [2, 0, 1]}, r"sample.stage_steps\[1\]=0 is not valid: it must be >= 1"),
                       ({"cfg_schedule": "cosine"}, "constant, linear")]:
        with pytest.raises(ConfigError, match=match):
            apply_sample_overrides(ecar, bad)


def test_sampler_flags_come_from_the_settings_dataclasses():
    flags = {f.flag: f for f in sampler_flags()}
    fields = {f.name for m in METHODS.values() for f in dataclasses.fields(m.sample_config_cls)}
    assert set(flags) == {"--" + n.replace("_", "-") for n in fields}
    assert flags["--sampler"].choices == SAMPLER_NAMES
    assert flags["--stage-steps"].type("10,8,6") == [10, 8, 6]
    assert flags["--cfg-interval"].type("0,0.7") == [0.0, 0.7]
    assert flags["--stage-steps"].help.startswith("ecar, flowar:")  # not every method has it
    assert "dit:" in flags["--steps"].help and "ecar, flowar:" in flags["--steps"].help
    assert "dit" not in flags["--cfg"].help  # shared and alike: no method named
    args = type("Args", (), {"cfg": 3.0, "steps": None, "stage_steps": [2, 2, 2]})()
    assert flag_overrides(args) == {"cfg": 3.0, "stage_steps": [2, 2, 2]}


def test_scale_steps_keeps_the_allocation_and_rounds_half_up():
    assert [scale_count(k, 0.5) for k in (10, 8, 6, 5, 1)] == [5, 4, 3, 3, 1]
    with pytest.raises(ValueError, match="> 0"):
        scale_count(4, 0.0)
    cfg, model, m = _tiny("ecar", "sample.stage_steps=[10,8,6]")
    half = m.scale_steps(model, cfg.sample, 0.5)
    assert half.stage_steps == [5, 4, 3] and cfg.sample.stage_steps == [10, 8, 6]
    assert m.step_counts(model, m.scale_steps(model, cfg.sample, 0.01)) == [1, 1, 1]
    cfg, model, m = _tiny("flowar")  # no stage_steps: sample.steps for every stage
    assert m.step_counts(model, cfg.sample) == [3, 3, 3]
    assert m.scale_steps(model, cfg.sample, 2).stage_steps == [6, 6, 6]
    cfg, model, m = _tiny("dit", "sample.steps=50")
    assert m.scale_steps(model, cfg.sample, 0.1).steps == 5 and cfg.sample.steps == 50
    assert m.step_counts(model, m.scale_steps(model, cfg.sample, 0.001)) == 1


# --------------------------------------------------------------------------- same seed, same result


def test_dit_protocol_equals_the_model_and_engine_calls():
    cfg, model, m = _tiny("dit", "sample.cfg_schedule=linear", "sample.sampler=heun")
    x, y = torch.randn(3, 1, 16, 16), torch.tensor([0, 4, 9])
    a = m.objective(model, cfg.flow)(x, y, torch.Generator().manual_seed(5))
    b = FlowMatchingObjective(model, cfg.flow)(x, y, torch.Generator().manual_seed(5))
    assert torch.equal(a["loss"], b["loss"])
    a = m.generate(model, cfg.sample, y, torch.Generator().manual_seed(6))["latents"]
    b = generate_single_unit(model, y, cfg.sample, torch.Generator().manual_seed(6))["latents"]
    assert torch.equal(a, b)
    images = Pipeline(model, cfg, IdentityAutoencoder(1))(labels=y, seed=6).tensor
    assert torch.equal(images, a)


@pytest.mark.parametrize("method", ["ecar", "flowar"])
def test_multistage_protocol_equals_the_model_and_engine_calls(method):
    cfg, model, m = _tiny(method, "sample.stage_steps=[3,2,2]", "sample.cfg=2.5",
                          "sample.cfg_schedule=linear", "sample.cfg_interval=[0,0.6]")
    x, y = torch.randn(3, 1, 16, 16), torch.tensor([0, 4, 9])
    a = m.objective(model, cfg.flow)(x, y, torch.Generator().manual_seed(5))
    b = MultistageObjective(model, cfg.flow)(x, y, torch.Generator().manual_seed(5))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the method's settings resolve to: steps per stage, linear ramp 1 -> cfg over stage / (S - 1),
    # no guidance past the interval
    guidance = tuple(guidance_scale(2.5, "linear", s / 2, [0.0, 0.6]) for s in range(3))
    assert guidance == (1.0, 1.75, 1.0)
    stages = StageSampleConfig((3, 2, 2), guidance, "euler", 1.0)
    assert m.stage_settings(model, cfg.sample) == stages
    a = m.generate(model, cfg.sample, y, torch.Generator().manual_seed(6), return_stages=True)
    b = generate_multistage(model, y, stages, torch.Generator().manual_seed(6), return_stages=True)
    assert all(torch.equal(u, v) for u, v in zip(a["stages"], b["stages"])) and len(a["stages"]) == 3
    images = Pipeline(model, cfg, IdentityAutoencoder(1))(labels=y, seed=6).tensor
    assert torch.equal(images, a["latents"])


@pytest.mark.parametrize("name", list(METHODS))
def test_on_unit_reports_each_unit_as_soon_as_it_exists(name):
    """The engine's hook (what `ecar serve` streams): one call per entry of step_counts, in
    order, with exactly the latents ``return_stages`` gives; the result does not change."""
    cfg, model, m = _tiny(name)
    y = torch.tensor([0, 4, 9])
    seen: list[tuple[int, torch.Tensor]] = []
    a = m.generate(model, cfg.sample, y, torch.Generator().manual_seed(3), return_stages=True,
                   on_unit=lambda i, x: seen.append((i, x.clone())))
    b = m.generate(model, cfg.sample, y, torch.Generator().manual_seed(3))
    counts = m.step_counts(model, cfg.sample)
    assert [i for i, _ in seen] == list(range(len(counts) if isinstance(counts, list) else 1))
    assert len(seen) == len(a["stages"]) and all(torch.equal(x, s) for (_, x), s in zip(seen, a["stages"]))
    assert torch.equal(seen[-1][1], a["latents"]) and torch.equal(a["latents"], b["latents"])
    decoded: list[torch.Tensor] = []
    out = Pipeline(model, cfg, IdentityAutoencoder(1))(labels=y, seed=3, on_unit=lambda i, im: decoded.append(im))
    assert len(decoded) == len(seen) and torch.equal(decoded[-1], out.tensor)


def test_a_raising_on_unit_stops_generation_and_restores_the_mode():
    cfg, model, _ = _tiny("ecar")
    model.train()

    def stop(i, images):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Pipeline(model, cfg, IdentityAutoencoder(1))(labels=torch.tensor([1, 2]), on_unit=stop)
    assert model.training


# --------------------------------------------------------------------------- no branches on methods

_NAMES = set(METHODS)


def _is_name(node: ast.AST) -> bool:
    """A method's name as a literal, or a tuple / list / set of literals holding one."""
    if isinstance(node, ast.Constant):
        return node.value in _NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(isinstance(e, ast.Constant) and e.value in _NAMES for e in node.elts)
    return False


def method_branches(source: str) -> list[str]:
    """``line: code`` of every comparison with a method's name (``==``, ``!=``, ``in``,
    ``not in``, ``is``) and every ``match`` case on one, anywhere in ``source``."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(
                isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn, ast.Is, ast.IsNot)) for op in node.ops):
            if any(_is_name(side) for side in [node.left, *node.comparators]):
                hits.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.match_case):
            values = [p.value for p in ast.walk(node.pattern) if isinstance(p, ast.MatchValue)]
            if any(_is_name(v) for v in values):
                hits.append(f"{node.pattern.lineno}: case {ast.unparse(node.pattern)}")
    return hits


def test_the_guard_sees_every_kind_of_branch():
    src = """
if method.name == "ar": pass
if method_of(cfg).name != "ar": pass
if name in ("dit", "ecar"): pass
if "xar" not in names: pass
ok = kind == "mlp" or family in ("image", "token")
match m.name:
    case "mar":
        pass
    case "dit" | "flowar":
        pass
    case _:
        pass
"""
    hits = method_branches(src)
    assert [h.split(":")[0] for h in hits] == ["2", "3", "4", "5", "8", "10"], hits


def test_no_method_branches_outside_the_methods():
    """Nothing outside methods/ and models/ branches on a method's name (``==``, ``!=``, ``in``,
    ``match``): every other module — engine, flow, samplers, pipeline, eval, bench, train,
    serve, cli, demo — asks the method (its protocol, its capabilities: ``drafting``) instead.
    Orchestration also never probes a network for what it is."""
    src = ROOT / "src" / "ecar"
    files = [p for p in sorted(src.rglob("*.py")) if p.relative_to(src).parts[0] not in ("methods", "models")]
    hits = [f"{f.relative_to(ROOT)}:{h}" for f in files for h in method_branches(f.read_text())]
    assert not hits, "\n".join(hits)
    assert len(files) > 60  # the scan is not vacuous
    orchestration = [p for p in files if p.relative_to(src).parts[0] in
                     ("eval", "bench", "train", "serve", "cli", "pipeline", "demo.py", "build.py", "checkpoint.py",
                      "config.py")]
    patterns = [r"hasattr\(\s*(model|m)\b", r"getattr\(\s*(model|self\.model|m)\b", r"\.num_stages\b",
                r"\.stage_steps\b", r"cfg\.model\.mode\b", r"isinstance\([^)]*(DiT|ECAR|MAR|XAR|AR)\b"]
    probes = [f"{f.relative_to(ROOT)}:{i}: {line.strip()}" for f in orchestration
              for i, line in enumerate(f.read_text().splitlines(), 1)
              if "``" not in line and any(re.search(p, line) for p in patterns)]  # ``…``: docs
    assert not probes, "\n".join(probes)
