"""benchmarks/gpu_regime.py (the paper's regime for one GPU) cannot rot: its --tiny run on CPU
goes through the same pipeline and its JSON must hold sane numbers; the budget and a missing
Fashion-MNIST are recorded as skips, not crashes."""

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_regime.py"


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _close(a: float, b: float, rel: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_regime")
    out = tmp / "regime.json"
    proc = _run("--tiny", "--out", str(out), "--work-dir", str(tmp / "bench"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_tiny_meta_and_nothing_skipped(tiny):
    meta = tiny["meta"]
    assert meta["tiny"] is True and meta["precision"] == "fp32" and meta["device"] == "cpu"
    assert meta["torch"] == torch.__version__
    assert meta["sampling_batches"] == [1, 2]
    assert "--tiny" in meta["command"] and meta["started"] and meta["finished"]
    assert 0 < meta["elapsed_s"] < meta["budget_s"]
    assert tiny["skipped"] == []


@pytest.mark.slow
def test_tiny_sampling_costs(tiny):
    models = tiny["sampling"]["models"]
    assert set(models) == {"ecar", "dit"}
    for key, m in models.items():
        assert m["latent"] == [4, 16, 16] and m["params_m"] > 0
        assert len(m["settings"]) == 3
        for row in m["settings"]:
            parts = row["parts"]
            assert row["gflops_per_image"] > 0
            assert _close(sum(parts.values()), row["gflops_per_image"])
            assert parts["backbone"] > 0 and parts["guidance"] > 0  # cfg 3: a measured null branch
            assert [t["batch"] for t in row["timing"]] == [1, 2]
            for t in row["timing"]:
                assert t["seconds_per_image"] > 0 and _close(t["images_per_s"] * t["seconds_per_image"], 1)
    # E-CAR: one entry per stage, in order, whose parts sum to the setting's total
    for row in models["ecar"]["settings"]:
        stages = row["stages"]
        assert [s["stage"] for s in stages] == [1, 2, 3, 4]
        for s in stages:
            assert _close(s["gflops"], s["backbone"] + s["head"] + s["guidance"]) and s["head"] > 0
        assert _close(sum(s["gflops"] for s in stages), row["gflops_per_image"])
        for p in ("backbone", "head", "guidance"):
            assert _close(sum(s[p] for s in stages), row["parts"][p])
    # fewer stage steps, fewer FLOPs; the AR transformer's share does not depend on them
    totals = [r["gflops_per_image"] for r in models["ecar"]["settings"]]
    assert totals[0] > totals[1] > totals[2]
    assert len({round(r["parts"]["backbone"], 12) for r in models["ecar"]["settings"]}) == 1
    # DiT: no head; Euler N runs N forwards, Heun N 2N - 1
    dit = {r["setting"]: r for r in models["dit"]["settings"]}
    fwd = models["dit"]["forward"]["gflops_per_image"]
    assert dit["euler 2"]["parts"]["head"] == 0
    assert _close(dit["euler 2"]["parts"]["backbone"], 2 * fwd)
    assert _close(dit["euler 4"]["parts"]["backbone"], 4 * fwd)
    assert _close(dit["heun 2"]["parts"]["backbone"], 3 * fwd)


@pytest.mark.slow
def test_tiny_head_call_against_dit_forward(tiny):
    m = tiny["sampling"]["models"]
    head, fwd = m["ecar"]["head_call"], m["dit"]["forward"]
    assert head["tokens"] == fwd["tokens"] == 64  # the last stage: the full 8x8 token grid
    # the last stage's head share grows by exactly one head call per extra step
    by = {r["setting"]: r for r in m["ecar"]["settings"]}
    last = [by[f"euler stage_steps={s}"]["stages"][-1]["head"] for s in ("3,3,2,2", "1,1,1,1")]
    assert _close(last[0] - last[1], head["gflops_per_image"])
    ratio = tiny["sampling"]["head_vs_dit_forward"]
    assert _close(ratio["gflops_ratio"], head["gflops_per_image"] / fwd["gflops_per_image"])
    assert [r["batch"] for r in ratio["seconds_ratio"]] == [1, 2]
    assert all(r["ratio"] > 0 for r in ratio["seconds_ratio"])


@pytest.mark.slow
def test_tiny_training_and_equal_time_bench(tiny):
    rows = {r["name"]: r for r in tiny["training"]["rows"]}
    assert set(rows) == {"ecar", "dit"}
    for r in rows.values():
        assert r["train_images_per_s"] > 0 and r["train_gflops_per_image"] > 0 and r["train_batch"] == 4
        # forward + backward cost more than one sampling forward per image
    assert rows["dit"]["train_gflops_per_image"] > tiny["sampling"]["models"]["dit"]["forward"]["gflops_per_image"]
    bench = tiny["equal_time_bench"]
    assert bench["dataset"] == "digits" and 0 < bench["train_seconds_each"] <= 3
    methods = bench["methods"]
    assert set(methods) == {"digits_dit", "digits_ecar"}
    for name, m in methods.items():
        other = "digits_ecar" if name == "digits_dit" else "digits_dit"
        s = m["shipped"]
        assert math.isfinite(s["fid_mean"]) and s["fid_mean"] >= 0
        assert s["gflops_per_image"] > 0 and s["seconds_per_image"] > 0
        assert m["train_steps"] > 0 and 0 < m["train_seconds"] < 30
        eq = m[f"equal_quality_vs_{other}"]
        assert "gflops_ratio" in eq and "seconds_ratio" in eq and eq["bound"] in (None, ">", "<")
        assert len(m["settings"]) >= 2  # shipped + the sweep


@pytest.mark.slow
def test_budget_exhausted_skips_every_part(tmp_path):
    out = tmp_path / "r.json"
    proc = _run("--tiny", "--budget-s", "0", "--out", str(out), "--work-dir", str(tmp_path / "b"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert {s["part"] for s in doc["skipped"]} == {"sampling", "training", "equal_time_bench"}
    assert all(s["reason"] for s in doc["skipped"])
    assert doc["sampling"]["models"] == {} and doc["training"]["rows"] == []
    assert "skipped" in doc["equal_time_bench"] and not (tmp_path / "b").exists()


def test_missing_fashion_mnist_is_a_recorded_skip(tmp_path, monkeypatch):
    """The GPU regime's part (c) without the dataset: skipped with the reason, nothing trained."""
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_regime

    monkeypatch.setenv("ECAR_FASHION_MNIST", str(tmp_path / "absent"))
    args = argparse.Namespace(budget_s=540.0, out=str(tmp_path / "r.json"), tiny=False, repeats=1, warmup=0,
                              eval_allowance_s=None, work_dir=str(tmp_path / "bench"))
    run = gpu_regime.Run(args, gpu_regime.FULL, torch.device("cpu"))
    run.equal_time_bench()
    doc = json.loads((tmp_path / "r.json").read_text())
    part = doc["equal_time_bench"]
    assert part["dataset"] == "fashion-mnist" and "dataset missing" in part["skipped"]
    assert doc["skipped"][0]["part"] == "equal_time_bench"
    assert not (tmp_path / "bench").exists()


def test_full_regime_refuses_cpu(tmp_path):
    proc = _run("--device", "cpu", "--out", str(tmp_path / "r.json"), timeout=120)
    assert proc.returncode == 2 and "--tiny" in proc.stderr
    assert not (tmp_path / "r.json").exists()
