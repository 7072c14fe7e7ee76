"""benchmarks/ratio_vs_budget.py (E-CAR's equal-quality lead against training minutes) reads
each budget's bench.json as `ecar bench` writes it: run on the committed 15- and 60-minute
Fashion benches, its JSON must carry exactly the ratios, FIDs and steps of those reports, in
budget order, and a bad --bench or --method is a clear error with a non-zero exit."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "ratio_vs_budget.py"
BENCHES = {60: ROOT / "benchmarks/results/fashion_bench_60min/bench.json",
           15: ROOT / "benchmarks/results/fashion_bench/bench.json"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.skipif(not all(p.is_file() for p in BENCHES.values()), reason="committed bench reports absent")
def test_ratios_match_the_bench_reports(tmp_path):
    out = tmp_path / "ratio"
    r = _run(*(a for m, p in BENCHES.items() for a in ("--bench", f"{m}={p}")), "--out", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.with_suffix(".json").read_text())
    assert [p["minutes"] for p in doc["budgets"]] == [15, 60]  # sorted, whatever the order given
    assert out.with_suffix(".png").stat().st_size > 10_000
    for point in doc["budgets"]:
        bench = json.loads(BENCHES[int(point["minutes"])].read_text())
        ecar = bench["methods"]["fashion_ecar"]
        assert set(point["ratios"]) == {"fashion_dit", "fashion_flowar"}
        for other, ratio in point["ratios"].items():
            eq = ecar[f"equal_quality_vs_{other}"]
            assert ratio["gflops"] == eq["gflops_ratio"] and ratio["seconds"] == eq["seconds_ratio"]
            assert ratio["gflops_bound"] == eq["gflops_bound"]
        for name, best in point["best"].items():
            rows = [row for row in bench["rows"] if row["name"] == name]
            assert best["fid_mean"] == min(row["fid_mean"] for row in rows)
            assert best["fid_mean"] <= point["shipped"][name]["fid_mean"]
        assert point["train_steps"]["fashion_ecar"] > 0
        assert f"{point['minutes']:g} min: vs fashion_dit: " in r.stdout


def test_bad_arguments_are_clear_errors(tmp_path):
    r = _run("--bench", f"15={tmp_path / 'missing.json'}", "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "MINUTES=PATH" in r.stderr
    if BENCHES[15].is_file():
        r = _run("--bench", f"15={BENCHES[15]}", "--method", "no_such", "--out", str(tmp_path / "x"))
        assert r.returncode != 0 and "has no method 'no_such'" in r.stderr
    assert not (tmp_path / "x.json").exists()
