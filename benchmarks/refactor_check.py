#!/usr/bin/env python
"""Fingerprints of every method's training, sampling and cost, for a refactor that must not
change behaviour (issue 26, acceptance 6): run it before and after, compare the JSONs.

    python benchmarks/refactor_check.py --out benchmarks/results/refactor26_before.json
    python benchmarks/refactor_check.py --out benchmarks/results/refactor26_after.json \\
        --compare benchmarks/results/refactor26_before.json

For every registered method it trains its digits recipe (``configs/digits_<method>.yaml``,
tiny overrides) for a few steps with ``ecar train``, then records

* ``files``: SHA-256 of every file of the newest checkpoint (weights, EMA, config) and of the
  training's preview grid; ``train_state.pt`` holds the training seconds (a clock reading), so
  it is recorded as the SHA-256 of its tensors and values without ``train_seconds``;
* ``images`` / ``stages``: SHA-256 of the float32 bytes of the images (and, for methods with
  several units, of each unit's images) that the Python API generates at a fixed seed, and
  ``gflops``: its GFLOPs per image;
* ``cli``: SHA-256 of the PNG grid ``ecar sample`` writes and the GFLOPs ``ecar info`` prints;
* ``eval``: the FID ``ecar eval`` reports for 32 images (digits net, held-out split);
* for ``ar``: a draft distilled by ``ecar draft`` (its checkpoint files), the images of exact
  speculative decoding at gamma 2 (Python API and ``ecar sample --draft``);
* ``bench``: ``ecar bench --ckpts`` over the dit and ecar runs, one sampler and multiplier:
  each row's FID and GFLOPs (its seconds are a clock and are left out).

Everything runs on one CPU thread (``OMP_NUM_THREADS=1`` in the children too), so sums are
reduced in one order. The Python API is ``ecar.load`` where it exists (after issue 26) and
``ecar.build.load_for_inference`` + ``ecar.generate.generate_images`` before it: the same
computation reached through each version's public door.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train.max_steps=3", "train.batch_size=8", "train.warmup_steps=1", "train.log_every=1",
        "train.tensorboard=false", "train.sample_every=0", "train.seed=11"]
SAMPLE = {"dit": ["sample.steps=3"], "ecar": ["sample.stage_steps=[2,2,1]"],
          "flowar": ["sample.stage_steps=[2,2,2]"], "mar": ["sample.steps=2", "sample.iterations=4"],
          "ar": ["sample.steps=3"], "xar": ["sample.steps=2"]}
N, SEED = 8, 5


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_sha(x: torch.Tensor) -> str:
    return sha(x.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())


def value_sha(v) -> str:
    """A stable hash of a nested value of tensors, numbers and strings."""
    h = hashlib.sha256()

    def walk(x) -> None:
        if isinstance(x, torch.Tensor):
            h.update(f"T{x.dtype}{tuple(x.shape)}".encode())
            h.update(x.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes()
                     if x.numel() else b"")
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(f"K{k}".encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for y in x:
                walk(y)
        else:
            h.update(f"V{x!r}".encode())

    walk(v)
    return h.hexdigest()


def ecar_cli(*args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "ecar", *args], env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"ecar {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout


def checkpoint_files(run: Path) -> dict:
    step = sorted((run / "checkpoints").glob("step-*"))[-1]
    out = {}
    for f in sorted(step.iterdir()):
        if f.name == "train_state.pt":
            state = torch.load(f, weights_only=True)
            state.pop("train_seconds", None)
            out[f.name + " (without train_seconds)"] = value_sha(state)
        else:
            out[f.name] = sha(f.read_bytes())
    for f in sorted((run / "samples").glob("*.png")):
        out["samples/" + f.name] = sha(f.read_bytes())
    return out


def python_api(run: Path, draft: Path | None = None) -> dict:
    """Images, stages and GFLOPs at seed SEED through the public Python door of this version."""
    import ecar

    if hasattr(ecar, "load"):  # issue 26: the pipeline
        pipe = ecar.load(run, device="cpu")
        if draft is not None:
            out = pipe.with_draft(ecar.load(draft, device="cpu", ema=False))(n=N, seed=SEED, gamma=2)
            return {"speculative_images": tensor_sha(out.tensor)}
        out = pipe(n=N, seed=SEED)
        res = {"images": tensor_sha(out.tensor), "gflops": out.gflops_per_image}
        if pipe.units > 1:
            res["stages"] = [tensor_sha(s) for s in pipe.stages(n=N, seed=SEED).stages]
        return res
    from ecar.build import load_for_inference
    from ecar.eval.cost import count_flops
    from ecar.generate import generate_images, labels_for
    from ecar.methods import apply_sample_overrides

    L = load_for_inference(str(run), torch.device("cpu"))
    labels = labels_for(N, L.num_classes)
    if draft is not None:
        D = load_for_inference(str(draft), torch.device("cpu"), use_ema=False)
        sample = apply_sample_overrides(L.cfg.sample, {"gamma": 2})
        out = generate_images(L.model, L.cfg, L.autoencoder, labels, sample, seed=SEED, draft=D.model)
        return {"speculative_images": tensor_sha(out["images"])}
    out = generate_images(L.model, L.cfg, L.autoencoder, labels, seed=SEED)
    res = {"images": tensor_sha(out["images"]), "gflops": count_flops(L.model, L.cfg, L.cfg.sample, batch=1)}
    counts = L.method.step_counts(L.model, L.cfg.sample)
    if isinstance(counts, list) and len(counts) > 1:
        st = generate_images(L.model, L.cfg, L.autoencoder, labels, seed=SEED, return_stages=True)
        res["stages"] = [tensor_sha(s) for s in st["stages"]]
    return res


def info_gflops(run: Path) -> float:
    text = ecar_cli("info", "--ckpt", str(run))
    return float(re.search(r"sampling:\s+([0-9.eE+-]+) GFLOPs", text).group(1))


def check_method(name: str, root: Path) -> dict:
    run = root / name
    recipe = ROOT / "configs" / f"digits_{name}.yaml"
    ecar_cli("train", "--config", str(recipe), "--out", str(run), "--quiet", *TINY, *SAMPLE[name])
    grid = root / f"{name}.png"
    ecar_cli("sample", "--ckpt", str(run), "--n", str(N), "--seed", str(SEED), "--out", str(grid))
    ev = json.loads(ecar_cli("eval", "--ckpt", str(run), "--n", "32", "--metrics", "fid", "--seed", "1"))
    rec = {"files": checkpoint_files(run), **python_api(run),
           "cli": {"sample_grid_png": sha(grid.read_bytes()), "info_gflops": info_gflops(run)},
           "eval": {"fid": ev["fid"]}}
    if name == "ar":
        draft = root / "ar_draft"
        ecar_cli("draft", "--ckpt", str(run), "--out", str(draft), "--distill-steps", "3", "--batch", "2",
                 "--pool", "8", "--width", "32", "--components", "4", "--quiet")
        spec_grid = root / "ar_spec.png"
        ecar_cli("sample", "--ckpt", str(run), "--draft", str(draft), "--gamma", "2", "--n", str(N),
                 "--seed", str(SEED), "--out", str(spec_grid))
        draft_files = {k: v for k, v in checkpoint_files(draft).items() if not k.startswith("samples/")}
        rec["draft"] = {"files": draft_files, **python_api(run, draft),
                        "cli_sample_grid_png": sha(spec_grid.read_bytes())}
    return rec


def bench_rows(root: Path) -> list[dict]:
    out = root / "bench"
    ecar_cli("bench", "--ckpts", str(root / "dit"), str(root / "ecar"), "--n-eval", "32", "--sweep", "1",
             "--samplers", "euler", "--seeds", "0", "--quiet", "--out", str(out))
    rows = json.loads((out / "bench.json").read_text())["rows"]
    keep = ("name", "mode", "setting", "step_scale", "steps", "sampler", "cfg", "fid", "fid_per_seed",
            "precision", "recall", "gflops_per_image", "train_steps", "params")
    return [{k: r[k] for k in keep if k in r} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="JSON to write")
    ap.add_argument("--compare", help="an earlier JSON: print and record whether everything matches")
    ap.add_argument("--methods", help="comma-separated subset (default: every registered method)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    from ecar.methods import METHODS

    names = a.methods.split(",") if a.methods else list(METHODS)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    res: dict = {"commit": commit, "torch": torch.__version__, "threads": 1, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["ECAR_CACHE"] = str(root / "cache")  # reference statistics computed afresh
        for name in names:
            print(f"[refactor_check] {name}", flush=True)
            res["methods"][name] = check_method(name, root)
        if {"dit", "ecar"} <= set(names):
            print("[refactor_check] bench", flush=True)
            res["bench"] = bench_rows(root)
    if a.compare:
        before = json.loads(Path(a.compare).read_text())
        diffs = []

        def walk(x, y, path: str) -> None:
            if isinstance(x, dict) and isinstance(y, dict):
                for k in sorted(set(x) | set(y)):
                    walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
            elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
                for i, (u, v) in enumerate(zip(x, y)):
                    walk(u, v, f"{path}[{i}]")
            elif x != y:
                diffs.append(f"{path}: before {x!r}, after {y!r}")

        walk({k: v for k, v in before.items() if k not in ("commit", "comparison")},
             {k: v for k, v in res.items() if k not in ("commit", "comparison")}, "")
        res["comparison"] = {"against": a.compare, "before_commit": before.get("commit"),
                             "identical": not diffs, "differences": diffs}
        print("identical" if not diffs else "DIFFERENT:\n  " + "\n  ".join(diffs))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
