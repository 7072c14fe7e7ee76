"""The paper's regime, ready for a GPU: E-CAR-L against DiT-XL/2 at ImageNet-256 sizes, in one run.

On one CUDA GPU, within ``--budget-s`` seconds (default 540, so the whole run fits a
10-minute slot), this writes ONE JSON (``--out``) with three parts:

(a) ``sampling``: sampling cost of the ImageNet-256 recipes (``configs/imagenet256_ecar.yaml``
    = E-CAR-L, ``configs/imagenet256_dit.yaml`` = DiT-XL/2) at **random initialisation** in
    TAEF2 latent space (32 × 32 × 32 latents, 1000 classes; no autoencoder weights or data
    needed), bf16 autocast, at batch 1, 16 and 64. E-CAR-L at stage steps [10,10,8,8,6] (the
    recipe's), [4,4,3,3,2] and [2,2,2,1,1]; DiT-XL/2 at Euler 10/25/50 and Heun 25. Per setting:
    GFLOPs per image split by part (and, for E-CAR, by stage) by
    :func:`ecar.eval.cost.cost_anatomy` (counted once, at batch 1: FLOPs per image do not
    depend on the batch), and seconds per image at each batch by
    :func:`ecar.eval.cost.time_sampling` (median of ``--repeats`` calls after ``--warmup``,
    CUDA synchronised around each) inside the autocast context. Also one E-CAR-L head call
    on the last stage's tokens against one DiT-XL/2 forward (unguided, the same images), in
    FLOPs and measured time.
(b) ``training``: training images/s and GFLOPs per image of both recipes at
    ``--train-batch`` (:func:`throughput.measure_training`, the protocol of
    benchmarks/throughput.py).
(c) ``equal_time_bench``: with the time left, DiT and E-CAR with the same S-size backbone
    (``--bench-overrides``) trained on Fashion-MNIST for equal wall time each by
    :func:`ecar.bench.run.run_bench` (configs/fashion_dit.yaml, configs/fashion_ecar.yaml;
    train minutes = (time left − ``--eval-allowance-s``) / 2, one seed, the default sweep),
    with each method's shipped-setting FID, GFLOPs, seconds and the equal-quality ratios of
    the bench summary. Fashion-MNIST is looked up as ``ecar`` does (``ECAR_FASHION_MNIST``, then
    /usr/share/datasets/fashion-mnist); when it is missing the part is skipped, the reason
    recorded.

The clock is checked between pieces: a piece whose estimated time (from the pieces already
measured) does not fit what is left of its part's share of the budget is skipped and listed
with the reason; the JSON is rewritten after every piece, so an interrupted run keeps what it
finished. ``--tiny`` runs the same pipeline on CPU with tiny networks (fp32, 4×16×16 latents,
batches 1 and 2, part (c) on the digits recipes with seconds of training): the test
(tests/test_gpu_regime.py) that keeps this script from rotting.

    python benchmarks/gpu_regime.py --out benchmarks/results/gpu_regime_h100.json
    python benchmarks/gpu_regime.py --tiny --out /tmp/gpu_regime_tiny.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import sys
import time
import traceback
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import throughput  # noqa: E402  (benchmarks/throughput.py: the training protocol and the latent shapes)

from ecar import __version__ as ECAR_VERSION  # noqa: E402
from ecar.bench.run import DEFAULT_SWEEP, run_bench  # noqa: E402
from ecar.build import LatentSpec, build_model  # noqa: E402
from ecar.config import load_config  # noqa: E402
from ecar.data import DataError  # noqa: E402
from ecar.data.fashion_mnist import find_fashion_mnist  # noqa: E402
from ecar.device import pick_device  # noqa: E402
from ecar.eval.cost import cost_anatomy, median_seconds, time_sampling  # noqa: E402
from ecar.autoencoders import IdentityAutoencoder  # noqa: E402
from ecar.pipeline import Pipeline  # noqa: E402

# ---------------------------------------------------------------------------- the two regimes

FULL = {
    "batches": [1, 16, 64],
    "train_batch": 32,
    "models": {
        "ecar": {"recipe": "imagenet256_ecar.yaml", "overrides": [],
                 "settings": [{"stage_steps": [10, 10, 8, 8, 6]}, {"stage_steps": [4, 4, 3, 3, 2]},
                              {"stage_steps": [2, 2, 2, 1, 1]}]},
        "dit": {"recipe": "imagenet256_dit.yaml", "overrides": [],
                "settings": [{"sampler": "euler", "steps": 10}, {"sampler": "euler", "steps": 25},
                             {"sampler": "euler", "steps": 50}, {"sampler": "heun", "steps": 25}]},
    },
    "bench": {"configs": ["fashion_dit.yaml", "fashion_ecar.yaml"], "dataset": "fashion-mnist",
              "overrides": ["model.hidden=384", "model.depth=12", "model.heads=6"],
              "n_eval": 500, "eval_allowance_s": 150.0, "train_cap_s": None, "min_train_s": 20.0,
              "sweep": list(DEFAULT_SWEEP)},
}
TINY_NET = ["model.hidden=32", "model.depth=1", "model.heads=2"]
TINY = {
    "batches": [1, 2],
    "train_batch": 4,
    "latent": (4, 16, 10),  # channels, side, classes: patch 2 -> token grids 1, 2, 4, 8 (4 stages)
    "models": {
        "ecar": {"recipe": "imagenet256_ecar.yaml",
                 "overrides": ["model.name=ecar-tiny", *TINY_NET, "model.head_width=32", "model.head_depth=1"],
                 "settings": [{"stage_steps": [3, 3, 2, 2]}, {"stage_steps": [2, 2, 1, 1]},
                              {"stage_steps": [1, 1, 1, 1]}]},
        "dit": {"recipe": "imagenet256_dit.yaml", "overrides": ["model.name=dit-tiny", *TINY_NET],
                "settings": [{"sampler": "euler", "steps": 2}, {"sampler": "euler", "steps": 4},
                             {"sampler": "heun", "steps": 2}]},
    },
    "bench": {"configs": ["digits_dit.yaml", "digits_ecar.yaml"], "dataset": "digits",
              "overrides": TINY_NET, "n_eval": 32, "eval_allowance_s": 60.0, "train_cap_s": 3.0,
              "min_train_s": 1.0, "cost_batch": 4, "cost_repeats": 1,
              "sweep": [0.2]},  # shipped + Euler and Heun at 0.2x: each FID costs ~2 s of CPU
}
SHARE = {"sampling": 0.45, "training": 0.60, "equal_time_bench": 1.0}
"""Fraction of the budget by which each part must be done (its pieces are skipped past it);
part (c) takes what is left."""


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


class Budget:
    """Seconds since the start against the budget; ``left(part)`` = what the part may still use."""

    def __init__(self, seconds: float):
        self.seconds, self.t0 = float(seconds), time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self, part: str | None = None) -> float:
        end = self.seconds * (SHARE[part] if part else 1.0)
        return end - self.elapsed()


def _gflops_per_image(fn, batch: int) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / batch / 1e9


def _label(sample) -> str:
    if getattr(sample, "stage_steps", None):
        return f"{sample.sampler} stage_steps={','.join(map(str, sample.stage_steps))}"
    return f"{sample.sampler} {sample.steps}"


class Run:
    """The pieces of one gpu_regime run and the JSON they fill."""

    def __init__(self, args, regime: dict, device: torch.device):
        self.args, self.regime, self.device = args, regime, device
        self.precision = "bf16" if device.type == "cuda" else "fp32"
        self.budget = Budget(args.budget_s)
        self.out = Path(args.out)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        self.doc = {
            "meta": {
                "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
                "started": _now(), "finished": None, "elapsed_s": None,
                "device": str(device), "device_name": name or f"{platform.machine()} CPU",
                "threads": torch.get_num_threads(), "torch": torch.__version__, "ecar": ECAR_VERSION,
                "python": platform.python_version(), "precision": self.precision,
                "autocast": "torch.autocast(bfloat16)" if self.precision == "bf16" else None,
                "tiny": bool(args.tiny), "budget_s": args.budget_s,
                "sampling_batches": regime["batches"], "train_batch": regime["train_batch"],
                "timing": {"repeats": args.repeats, "warmup": args.warmup, "statistic": "median",
                           "flops_counted_at_batch": 1},
                "budget_shares": SHARE, "load_at_start": os.getloadavg()[0],
                "random_init": True,
            },
            "sampling": {"models": {}, "head_vs_dit_forward": None},
            "training": {"rows": []},
            "equal_time_bench": None,
            "skipped": [],
        }
        self.save()

    # ------------------------------------------------------------------ bookkeeping
    def save(self) -> None:
        self.doc["meta"]["elapsed_s"] = self.budget.elapsed()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=str) + "\n")
        os.replace(tmp, self.out)

    def skip(self, part: str, what: str, reason: str) -> dict:
        entry = {"part": part, "piece": what, "reason": reason, "at_s": round(self.budget.elapsed(), 2)}
        self.doc["skipped"].append(entry)
        print(f"[{self.budget.elapsed():6.1f}s] skipped {part}: {what}: {reason}", flush=True)
        return {"skipped": reason}

    def fits(self, part: str, what: str, estimate: float | None) -> str | None:
        """None if the piece may run, else the reason it is skipped."""
        left = self.budget.left(part)
        if left <= 0:
            return f"no time left for part {part} ({self.budget.elapsed():.0f} s of {self.args.budget_s:g} s used)"
        if estimate is not None and estimate > left:
            return f"estimated {estimate:.1f} s > {left:.1f} s left for part {part}"
        return None

    def say(self, msg: str) -> None:
        print(f"[{self.budget.elapsed():6.1f}s] {msg}", flush=True)

    def guarded(self, part: str, what: str, fn):
        """Run one piece; an exception (out of memory, ...) is recorded and the run goes on."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  (a one-shot GPU run must keep its other pieces)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            traceback.print_exc()
            return self.skip(part, what, f"failed: {type(e).__name__}: {str(e)[:300]}")

    def amp(self):
        return throughput.autocast_for(self.device, self.precision)

    # ------------------------------------------------------------------ models
    def build(self, key: str):
        spec_m = self.regime["models"][key]
        cfg = load_config(ROOT / "configs" / spec_m["recipe"], spec_m["overrides"])
        if self.args.tiny:
            ch, side, k = self.regime["latent"]
            cfg.data.channels, cfg.data.num_classes = 3, k
            spec = LatentSpec(ch, side, k)
        else:
            spec = throughput._spec(cfg)  # TAEF2 latents of the recipe's resolution, 1000 classes
        torch.manual_seed(0)
        model, _ = build_model(cfg, spec)
        model.to(self.device).eval()
        return cfg, spec, model

    # ------------------------------------------------------------------ part (a)
    def sampling(self) -> None:
        part = "sampling"
        models = self.doc["sampling"]["models"]
        for key in ("ecar", "dit"):
            if self.budget.left(part) <= 0:
                self.skip(part, key, "no time left for part sampling")
                continue
            built = self.guarded(part, f"{key} model", lambda: self.build(key))
            if isinstance(built, dict):
                models[key] = built
                self.save()
                continue
            cfg, spec, model = built
            entry = models[key] = {
                "recipe": f"configs/{self.regime['models'][key]['recipe']}",
                "overrides": self.regime["models"][key]["overrides"], "model": cfg.model.name,
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                "latent": [spec.channels, spec.size, spec.size], "num_classes": spec.num_classes,
                "guidance": {"cfg": cfg.sample.cfg, "cfg_schedule": cfg.sample.cfg_schedule,
                             "cfg_interval": cfg.sample.cfg_interval},
                "settings": [],
            }
            seen: list[tuple[float, int, float]] = []  # (GFLOPs per image, batch, s per image) measured
            for over in self.regime["models"][key]["settings"]:
                sample = dataclasses.replace(cfg.sample, **over)
                label = _label(sample)
                row = {"setting": label, "sample": dataclasses.asdict(sample)}
                entry["settings"].append(row)
                est = self._estimate(seen, None, 1)
                why = self.fits(part, f"{key} {label} FLOP count", None if est is None else 3 * est)
                if why:
                    row.update(self.skip(part, f"{key} {label} FLOP count", why))
                    self.save()
                    continue
                res = self.guarded(part, f"{key} {label} FLOP count",
                                   lambda: self._anatomy(model, cfg, sample, key))
                row.update(res)
                self.save()
                if "skipped" in res:
                    continue
                row["timing"] = []
                for b in self.regime["batches"]:
                    what = f"{key} {label} batch {b}"
                    est = self._estimate(seen, row["gflops_per_image"], b)
                    why = self.fits(part, what, None if est is None
                                    else est * (self.args.warmup + self.args.repeats))
                    if why:
                        row["timing"].append({"batch": b, **self.skip(part, what, why)})
                        continue

                    def timed(b=b):
                        with self.amp():
                            s = time_sampling(Pipeline(model, cfg, IdentityAutoencoder(spec.channels)), sample, batch=b, repeats=self.args.repeats,
                                              warmup=self.args.warmup)
                        return {"batch": b, "seconds_per_image": s, "images_per_s": 1.0 / s}

                    t = self.guarded(part, what, timed)
                    row["timing"].append({"batch": b, **t})
                    if "seconds_per_image" in t:
                        seen.append((row["gflops_per_image"], b, t["seconds_per_image"]))
                        self.say(f"{what}: {row['gflops_per_image']:.4g} GFLOPs/img, "
                                 f"{t['seconds_per_image'] * 1e3:.2f} ms/img")
                    self.save()
            single = "head_call" if key == "ecar" else "forward"
            entry[single] = self.guarded(part, f"{key} {single}", lambda: self._single_call(key, model, spec))
            del model
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.save()
        self.doc["sampling"]["head_vs_dit_forward"] = self._ratio()
        self.save()

    def _estimate(self, seen, gflops: float | None, batch: int) -> float | None:
        """Seconds of one sampling call of ``batch`` images, scaled from the measured call at the
        largest batch <= ``batch`` (per-image time falls with the batch, so this overestimates)
        by FLOPs and images; None before anything was measured."""
        below = [s for s in seen if s[1] <= batch]
        if not below:
            return None
        g, b, spi = max(below, key=lambda s: (s[1], s[0]))
        ratio = gflops / g if gflops else 1.0
        return spi * ratio * batch

    def _anatomy(self, model, cfg, sample, key: str) -> dict:
        with self.amp():
            an = cost_anatomy(Pipeline(model, cfg, IdentityAutoencoder(1)), sample, batch=1).as_dict()
        out = {"gflops_per_image": an["total"], "parts": an["parts"], "units": len(an["units"])}
        if key == "ecar":  # the per-stage split (coarse to fine)
            out["stages"] = [{"stage": i + 1, **u, "gflops": u["backbone"] + u["head"] + u["guidance"]}
                             for i, u in enumerate(an["units"])]
        self.say(f"{key} {_label(sample)}: {an['total']:.4g} GFLOPs/img "
                 f"(backbone {an['parts']['backbone']:.4g}, head {an['parts']['head']:.4g}, "
                 f"guidance {an['parts']['guidance']:.4g})")
        return out

    def _single_call(self, key: str, model, spec: LatentSpec) -> dict:
        """E-CAR: one head call on the last stage's tokens (conditions projected beforehand, as
        the sampling loop does once per stage); DiT: one forward. Unguided, per batch."""
        part = "sampling"
        dev = self.device

        def make(b: int):
            g = torch.Generator(device=dev).manual_seed(0)
            lat = torch.randn(b, spec.channels, spec.size, spec.size, generator=g, device=dev)
            t = torch.full((b,), 0.5, device=dev)
            if key == "dit":
                y = torch.arange(b, device=dev) % spec.num_classes
                return lambda: model(lat, t, y)
            x = model.stage_tokens(lat)
            with self.amp():
                zc = model.head_condition(torch.randn(b, x.shape[1], model.cfg.hidden, generator=g, device=dev))
            return lambda: model.velocity(x, t, zc, model.num_stages - 1)

        with torch.no_grad(), self.amp():
            fn = make(1)
            out = {"what": ("one head call on the last stage's tokens" if key == "ecar" else "one forward"),
                   "tokens": (model.grids[-1] ** 2 if key == "ecar" else model.grid ** 2),
                   "gflops_per_image": _gflops_per_image(fn, 1), "timing": []}
            for b in self.regime["batches"]:
                what = f"{key} single call batch {b}"
                why = self.fits(part, what, None)
                if why:
                    out["timing"].append({"batch": b, **self.skip(part, what, why)})
                    continue
                s = median_seconds(make(b), dev, max(self.args.repeats, 5), max(self.args.warmup, 2)) / b
                out["timing"].append({"batch": b, "seconds_per_image": s})
        self.say(f"{key} {out['what']}: {out['gflops_per_image']:.4g} GFLOPs/img")
        return out

    def _ratio(self) -> dict | None:
        m = self.doc["sampling"]["models"]
        head, fwd = m.get("ecar", {}).get("head_call"), m.get("dit", {}).get("forward")
        if not head or not fwd or "skipped" in head or "skipped" in fwd:
            return None
        t_fwd = {r["batch"]: r["seconds_per_image"] for r in fwd["timing"] if "seconds_per_image" in r}
        return {
            "what": f"one {m['ecar']['model']} head call (last stage's tokens) / one {m['dit']['model']} "
                    "forward, same images, unguided",
            "gflops_ratio": head["gflops_per_image"] / fwd["gflops_per_image"],
            "seconds_ratio": [{"batch": r["batch"], "ratio": r["seconds_per_image"] / t_fwd[r["batch"]]}
                              for r in head["timing"] if "seconds_per_image" in r and r["batch"] in t_fwd],
        }

    # ------------------------------------------------------------------ part (b)
    def training(self) -> None:
        part = "training"
        last = None
        for key in ("ecar", "dit"):
            what = f"{key} training"
            why = self.fits(part, what, None if last is None else 1.5 * last)
            if why:
                self.skip(part, what, why)
                continue
            t0 = time.monotonic()

            def one(key=key):
                spec_m = self.regime["models"][key]
                cfg = load_config(ROOT / "configs" / spec_m["recipe"], spec_m["overrides"])
                if self.args.tiny:
                    ch, side, k = self.regime["latent"]
                    cfg.data.num_classes = k
                    spec = LatentSpec(ch, side, k)
                else:
                    spec = throughput._spec(cfg)
                if self.device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(self.device)
                row, model = throughput.measure_training(cfg, spec, self.regime["train_batch"], self.device,
                                                         self.precision, self.args.train_steps,
                                                         self.args.train_warmup)
                del model
                row = {"name": key, "recipe": f"configs/{spec_m['recipe']}", "overrides": spec_m["overrides"],
                       **row}
                if self.device.type == "cuda":
                    row["max_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                    torch.cuda.empty_cache()
                return row

            row = self.guarded(part, what, one)
            last = time.monotonic() - t0
            if "skipped" not in row:
                self.doc["training"]["rows"].append(row)
                self.say(f"{what}: {row['train_images_per_s']:.1f} img/s, "
                         f"{row['train_gflops_per_image']:.4g} GFLOPs/img")
            self.save()

    # ------------------------------------------------------------------ part (c)
    def equal_time_bench(self) -> None:
        part = "equal_time_bench"
        b = self.regime["bench"]
        res: dict = {"configs": [f"configs/{c}" for c in b["configs"]], "dataset": b["dataset"],
                     "overrides": b["overrides"], "n_eval": b["n_eval"], "seeds": [0], "step_sweep": b["sweep"]}
        self.doc[part] = res
        if b["dataset"] == "fashion-mnist":
            try:
                res["data_dir"] = str(find_fashion_mnist())
            except DataError as e:
                res.update(self.skip(part, "Fashion-MNIST bench", f"dataset missing: {e}"))
                self.save()
                return
        allowance = self.args.eval_allowance_s if self.args.eval_allowance_s is not None else b["eval_allowance_s"]
        left = self.budget.left(part)
        train_s = (left - allowance) / 2
        if b["train_cap_s"] is not None:
            train_s = min(train_s, b["train_cap_s"])
        res.update({"time_left_s": left, "eval_allowance_s": allowance, "train_seconds_each": train_s})
        if train_s < b["min_train_s"]:
            res.update(self.skip(part, f"{b['dataset']} bench",
                                 f"{left:.0f} s left: {train_s:.1f} s of training each after the "
                                 f"{allowance:g} s evaluation allowance is under {b['min_train_s']:g} s"))
            self.save()
            return
        work = Path(self.args.work_dir or ROOT / "runs" / f"gpu_regime_{datetime.datetime.now():%Y%m%d_%H%M%S}")
        overrides = list(b["overrides"]) + ["train.max_steps=1000000", "train.tensorboard=false"]
        res.update({"work_dir": str(work), "run_overrides": overrides})
        kw = {k: b[k] for k in ("cost_batch", "cost_repeats") if k in b}
        self.say(f"{b['dataset']} bench: {train_s:.1f} s of training each, n_eval {b['n_eval']}, into {work}")
        t0 = time.monotonic()
        rows = self.guarded(part, f"{b['dataset']} bench", lambda: run_bench(
            configs=[str(ROOT / "configs" / c) for c in b["configs"]], train_minutes=train_s / 60.0,
            out=work, overrides=overrides, n_eval=b["n_eval"], device=str(self.device), progress=False,
            seeds=[0], step_sweep=b["sweep"], **kw))
        res["bench_seconds"] = time.monotonic() - t0
        if isinstance(rows, dict) and "skipped" in rows:
            res.update(rows)
            self.save()
            return
        summary = json.loads((work / "bench.json").read_text())["methods"]
        methods = {}
        for name, s in summary.items():
            mine = [r for r in rows if r["name"] == name]
            shipped = next(r for r in mine if r["setting"] == "shipped")
            methods[name] = {
                "model": shipped["model"], "params": shipped["params"], "train_steps": shipped["train_steps"],
                "train_seconds": shipped["train_seconds"],
                "shipped": {k: shipped[k] for k in ("setting", "steps", "sampler", "fid_mean", "fid_std",
                                                    "gflops_per_image", "seconds_per_image")},
                **{k: v for k, v in s.items() if k.startswith("equal_quality_vs_")},
                "settings": [{k: r[k] for k in ("setting", "steps", "sampler", "fid_mean", "gflops_per_image",
                                                "seconds_per_image")} for r in mine],
            }
        res["methods"] = methods
        self.save()


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="the JSON (default benchmarks/results/gpu_regime_<gpu>.json)")
    ap.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget of the whole run")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--tiny", action="store_true", help="tiny networks on CPU (fp32): the pipeline's test")
    ap.add_argument("--repeats", type=int, default=3, help="timed sampling calls (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed sampling calls before them")
    ap.add_argument("--train-steps", type=int, default=None, help="timed training steps (default 5; tiny 2)")
    ap.add_argument("--train-warmup", type=int, default=None, help="untimed training steps (default 2; tiny 1)")
    ap.add_argument("--eval-allowance-s", type=float, default=None,
                    help="seconds kept for part (c)'s evaluation (default 150; tiny 60)")
    ap.add_argument("--work-dir", default=None, help="part (c)'s bench directory (default runs/gpu_regime_<time>)")
    ap.add_argument("--parts", default="sampling,training,equal_time_bench",
                    help="which parts to run, comma-separated (the others are recorded as skipped)")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    device = pick_device("cpu" if args.tiny and args.device == "auto" else args.device, where="--device")
    if not args.tiny and device.type != "cuda":
        print("error: the paper's regime (E-CAR-L, DiT-XL/2) needs a CUDA GPU; on CPU run --tiny",
              file=sys.stderr)
        return 2
    if args.tiny and device.type == "cpu":
        torch.set_num_threads(1)
    regime = TINY if args.tiny else FULL
    args.train_steps = args.train_steps or (2 if args.tiny else 5)
    args.train_warmup = args.train_warmup if args.train_warmup is not None else (1 if args.tiny else 2)
    if args.out is None:
        name = slug(torch.cuda.get_device_name(device)) if device.type == "cuda" else "cpu"
        args.out = str(ROOT / "benchmarks" / "results" / f"gpu_regime_{name}{'_tiny' if args.tiny else ''}.json")
    run = Run(args, regime, device)
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    for part in ("sampling", "training", "equal_time_bench"):
        if part in wanted:
            run.guarded(part, part, getattr(run, part))  # a failure is recorded; the next part runs
        else:
            run.skip(part, part, "not requested (--parts)")
    run.doc["meta"]["finished"] = _now()
    run.save()
    print(f"wrote {run.out} ({run.budget.elapsed():.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
