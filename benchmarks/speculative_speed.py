"""Wall-clock speed-up of exact speculative decoding over plain decoding of the same target
(issue 9; docs/speculative.md), at equal output distribution.

1. A target ``ar`` model on digits (``configs/digits_ar.yaml`` with ``--target-overrides``)
   is trained for ``--target-steps`` (or taken from ``--target RUN``).
2. The draft (``--draft-kind``):
   ``head`` (default): the target's own transformer with a Gaussian-mixture head whose chain
   needs no network call per step, distilled on the target's own guided chains by the path KL
   (the ar method's drafting, :mod:`ecar.methods.ar.draft`, what ``ecar draft`` runs); the
   engine reuses the target's passes.
   ``network``: a separate small ``ar`` network (``configs/digits_ar_draft.yaml`` with
   ``--draft-overrides``) distilled by regressing its head velocity on the target's.
   ``--draft RUN`` reuses a draft made earlier. It is saved as the run ``WORK/draft``.
3. GFLOPs per image of both at the sampling settings (``ecar.Pipeline.gflops``, plain
   sampling of each network): the draft must be >= 4× cheaper.
4. Timing: ``--time-images`` images in batches of ``--time-batch`` (speculative decoding
   pays off where a call's cost is latency, i.e. small batches), plain and speculative at
   each of ``--settings`` (γ and verification mode) and each of ``--thread-counts``, same
   seeds, interleaved, ``--repeats`` times, median; the result is plain at its fastest thread
   count against the fastest speculative setting (each side tuned alike), every setting is in
   the JSON. Time only on a quiet machine.
5. Equal distribution: FID (digits classifier features, held-out digits) of ``--fid-n``
   images per seed for plain and speculative sampling (the fastest setting) of the target,
   seeds ``--seeds``;
   the JSON holds both means ± std, the acceptance rate and tokens per verification, and
   the FID of the target's ODE (Euler) sampler for reference.

    python benchmarks/speculative_speed.py --out benchmarks/results/speculative_speed.json

Tiny untimed check (minutes): ``--target-steps 30 --draft-steps 30 --fid-n 50 --seeds 0
--time-images 2 --repeats 1 --target-overrides model.depth=2 --work DIR``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import ecar
from ecar.build import build_data
from ecar.checkpoint import save_checkpoint
from ecar.config import load_config
from ecar.eval.evaluate import fid_of_images
from ecar.eval.features import default_feature_net
from ecar.eval.reference import reference_stats
from ecar.flow import drop_labels, interpolate, sample_time, target_velocity
from ecar.methods import apply_sample_overrides
from ecar.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]
TARGET = ["model.depth=4", "model.hidden=128", "model.head_width=256", "model.head_depth=4",
          "model.context_time=0.9", "sample.time_power=2"]
DRAFT = ["model.depth=1", "model.hidden=64", "model.heads=4", "model.head_width=64", "model.head_depth=1"]
QUIET = ["train.tensorboard=false", "train.sample_every=0", "train.ckpt_every=0"]
SETTINGS = ["gamma=1,verify=step", "gamma=3,verify=step", "gamma=4,verify=step", "gamma=6,verify=step"]


def distill(target, draft, cfg, steps: int, batch: int, lr: float, fm_weight: float, seed: int) -> list[float]:
    """Train ``draft`` (in place) to match ``target``'s head velocity on training tokens."""
    data = build_data(cfg.data)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(draft.parameters(), lr=lr, weight_decay=0.0)
    target.eval()
    draft.train()
    losses = []
    for step in range(steps):
        idx = torch.randint(len(data), (batch,), generator=g)
        x = torch.stack([data[int(i)][0] for i in idx])
        y = drop_labels(torch.tensor([data[int(i)][1] for i in idx]), cfg.flow.class_dropout, target.null_class, g)
        tokens = target.tokens(x)
        flat = tokens.reshape(-1, tokens.shape[-1])
        t = sample_time(flat.shape[0], "uniform", generator=g)
        noise = torch.randn(flat.shape, generator=g)
        xt = interpolate(noise, flat, t).reshape(tokens.shape)
        tt = t.reshape(tokens.shape[:2])
        with torch.no_grad():
            vp = target.velocity(xt, tt, target.head_condition(target.condition(tokens, None, y)))
        vq = draft.velocity(xt, tt, draft.head_condition(draft.condition(tokens, None, y)))
        fm = (vq - target_velocity(noise, flat).reshape(tokens.shape)).pow(2).mean()
        loss = (vq - vp).pow(2).mean() + fm_weight * fm
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:  # linear warm-up, cosine decay
            group["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
        opt.step()
        losses.append(float(loss.detach()))
    draft.eval()
    return losses


def sequential_calls(stats: dict, images: int, batch: int, steps: int, tokens: int) -> dict:
    """Network calls per sampling batch of the timed runs (a call serves the whole batch):
    plain decoding makes (1 + K)·N target calls; speculative its counted target and draft
    calls over the number of batches. Weighted by each call's latency, their ratio is what
    the wall-clock speed-up tracks at small batches."""
    batches = -(-images // batch)
    return {"plain_target": (1 + steps) * tokens,
            "speculative_target": (stats["target_passes"] + stats["target_head_calls"]) / batches,
            "speculative_draft": (stats["draft_passes"] + stats["draft_head_calls"]) / batches}


def timed(pipe: ecar.Pipeline, labels, sample, batch: int, seed: int) -> tuple[float, dict | None]:
    start = time.perf_counter()
    out = pipe(labels=labels, sample=sample, seed=seed, batch_size=batch)
    return time.perf_counter() - start, out.speculative


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="result JSON (new file)")
    ap.add_argument("--work", help="directory for the trained runs (default: a temporary one)")
    ap.add_argument("--target", help="an existing target run (skips its training)")
    ap.add_argument("--target-steps", type=int, default=3000)
    ap.add_argument("--target-overrides", nargs="*", default=TARGET)
    ap.add_argument("--draft", help="an existing distilled draft run, e.g. WORK/draft of an earlier run "
                    "(skips the distillation; --draft-* settings are then only recorded)")
    ap.add_argument("--draft-kind", choices=("head", "network"), default="head")
    ap.add_argument("--draft-steps", type=int, default=4000, help="distillation steps (the head's; a network "
                    "draft was distilled 1,500 in its run)")
    ap.add_argument("--components", type=int, default=32, help="--draft-kind head: mixture components")
    ap.add_argument("--draft-width", type=int, default=512, help="--draft-kind head: width of the mixture MLP")
    ap.add_argument("--draft-overrides", nargs="*", default=DRAFT)
    ap.add_argument("--draft-batch", type=int, help="images per distillation step (default: 8 for a head, "
                    "whose loss runs the target's chains at every position, 32 for a network)")
    ap.add_argument("--draft-lr", type=float, default=1e-3)
    ap.add_argument("--fm-weight", type=float, default=0.1)
    ap.add_argument("--sample", nargs="*", default=["steps=10", "residual_batch=8"],
                    help="sampling overrides of both runs (key=value)")
    ap.add_argument("--settings", nargs="*", default=SETTINGS,
                    help="speculative settings timed against plain sampling (comma-separated key=value "
                         "each); the fastest is reported and its FID measured")
    ap.add_argument("--time-images", type=int, default=20)
    ap.add_argument("--time-batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fid-n", type=int, default=1000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--thread-counts", default="1,2",
                    help="torch thread counts the timing tries for both sides (comma-separated); each side's "
                         "fastest counts, so the baseline gets the same tuning (empty: the default only)")
    args = ap.parse_args()
    if Path(args.out).exists():
        raise SystemExit(f"error: {args.out} exists; choose a new --out")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.draft_batch = args.draft_batch or (8 if args.draft_kind == "head" else 32)
    work = Path(args.work or tempfile.mkdtemp(prefix="ecar-spec-"))
    target_run = Path(args.target) if args.target else work / "target"
    if not args.target:
        cfg = load_config(ROOT / "configs" / "digits_ar.yaml",
                          [*args.target_overrides, f"train.max_steps={args.target_steps}", *QUIET])
        train(cfg, target_run, progress=False)
    target = ecar.load(target_run, "cpu")
    losses, distill_s, res = [float("nan")], None, None
    sample = apply_sample_overrides(target.sample, args.sample)
    drafting = target.method.drafting
    assert drafting is not None, "the target's method cannot be drafted"
    if args.draft:
        draft_run = Path(args.draft)
        draft = ecar.load(draft_run, "cpu", ema=False)
    elif args.draft_kind == "head":  # built from the target: a pair by construction
        t0 = time.perf_counter()
        model, model_cfg = drafting.make_draft(target.model, target.cfg.model, args.components, args.draft_width)
        res = drafting.distill(target.model, model, sample, steps=args.draft_steps, batch=args.draft_batch,
                               lr=args.draft_lr, pool=2000)
        distill_s, losses = time.perf_counter() - t0, res["losses"]
        draft_run = work / "draft"  # ecar sample --ckpt TARGET --draft it
        dcfg = dataclasses.replace(target.cfg, model=model_cfg)
        save_checkpoint(draft_run, model=model, ema=model, cfg=dcfg, step=args.draft_steps, train_state={})
        draft = ecar.load(draft_run, "cpu", ema=False)
    else:
        draft_run = work / "draft_init"
        dcfg = load_config(ROOT / "configs" / "digits_ar_draft.yaml",
                           [*args.draft_overrides, "train.max_steps=1", *QUIET])
        train(dcfg, draft_run, progress=False)  # a checkpoint of the draft's architecture, then distilled here
        draft = ecar.load(draft_run, "cpu", ema=False)
        t0 = time.perf_counter()
        losses = distill(target.model, draft.model, target.cfg, args.draft_steps, args.draft_batch,
                         args.draft_lr, args.fm_weight, seed=0)
        distill_s = time.perf_counter() - t0
        draft_run = work / "draft"
        save_checkpoint(draft_run, model=draft.model, ema=draft.model, cfg=draft.cfg, step=args.draft_steps,
                        train_state={})
    report = Path(draft_run) / "draft.json"  # what ecar draft measured while distilling (or res: distilled here)
    distillation = json.loads(report.read_text()) if report.exists() else res
    distillation = distillation and {k: v for k, v in distillation.items() if k != "losses"}
    drafted = target.with_draft(draft)  # refused unless the draft fits the target
    gflops_t = target.gflops(sample, batch=4)
    gflops_d = draft.gflops(sample, batch=4)

    labels = target.labels(args.time_images)
    threads = [int(t) for t in args.thread_counts.split(",")] if args.thread_counts else [torch.get_num_threads()]
    default_threads = torch.get_num_threads()
    plain_times = {th: [] for th in threads}
    settings = [{"overrides": o, "threads": th, "sample": apply_sample_overrides(sample, o.split(",")),
                 "seconds": [], "stats": None} for th in threads for o in args.settings]
    for r in range(args.repeats):  # interleaved, so that a drift of the machine's speed hits all alike
        for th in threads:
            torch.set_num_threads(th)
            plain_times[th].append(timed(target, labels, sample, args.time_batch, seed=r)[0])
            for st in (st for st in settings if st["threads"] == th):
                s, st["stats"] = timed(drafted, labels, st["sample"], args.time_batch, seed=r)
                st["seconds"].append(s)
    torch.set_num_threads(default_threads)
    # each side at its own best: plain at its fastest thread count, speculative at its fastest setting
    best_threads = min(threads, key=lambda th: statistics.median(plain_times[th]))
    plain_s, med_p = plain_times[best_threads], statistics.median(plain_times[best_threads])
    for st in settings:
        st["speedup"] = med_p / statistics.median(st["seconds"])
        st["speedup_same_threads"] = statistics.median(plain_times[st["threads"]]) / statistics.median(st["seconds"])
    best = max(settings, key=lambda st: st["speedup"])
    spec_s, stats, sample = best["seconds"], best["stats"], best["sample"]

    ref = reference_stats(target.cfg, default_feature_net(target.cfg.data.name))
    net = default_feature_net(target.cfg.data.name)
    fids = {"plain": [], "speculative": [], "plain_euler_ode": []}
    ode = dataclasses.replace(sample, sampler="euler")
    fid_stats = []
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        plain = target(args.fid_n, sample=sample, seed=seed, batch_size=256)
        spec = drafted(args.fid_n, sample=sample, seed=seed, batch_size=256)
        fids["plain"].append(fid_of_images(plain.tensor, ref, net))
        fids["speculative"].append(fid_of_images(spec.tensor, ref, net))
        ode_images = target(args.fid_n, sample=ode, seed=seed, batch_size=256)
        fids["plain_euler_ode"].append(fid_of_images(ode_images.tensor, ref, net))
        fid_stats.append(spec.speculative)

    def summary(v):
        return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "values": v}

    med_s = statistics.median(spec_s)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "command": "python benchmarks/speculative_speed.py " + " ".join(sys.argv[1:]),
        "target": {"run": str(target_run), "steps": target.step, "overrides": args.target_overrides,
                   "gflops_per_image": gflops_t},
        "draft": {"run": str(draft_run), "kind": args.draft_kind if not args.draft else draft.cfg.model.head_type,
                  "overrides": args.draft_overrides if args.draft_kind == "network" else [], "distill_steps": draft.step if args.draft else args.draft_steps,
                  "distill_seconds": distill_s, "final_loss": statistics.fmean(losses[-20:]),
                  "gflops_per_image": gflops_d, "distillation": distillation},
        "draft_cheaper_by": gflops_t / gflops_d,
        "sample": {k: v for k, v in vars(sample).items()},
        "timing": {"images": args.time_images, "batch": args.time_batch, "plain_threads": best_threads,
                   "plain_s": plain_s, "plain_s_by_threads": {str(th): v for th, v in plain_times.items()},
                   "best": best["overrides"], "best_threads": best["threads"], "speculative_s": spec_s,
                   "speedup": med_p / med_s, "stats": stats,
                   "settings": [{"overrides": st["overrides"], "threads": st["threads"],
                                 "speculative_s": st["seconds"], "speedup": st["speedup"],
                                 "speedup_same_threads": st["speedup_same_threads"], "stats": st["stats"]}
                                for st in settings],
                   "sequential_calls": sequential_calls(stats, args.time_images, args.time_batch, sample.steps,
                                                        target.model.num_tokens)},
        "fid": {k: summary(v) for k, v in fids.items()},
        "fid_run_stats": fid_stats,
    }
    text = json.dumps(result, indent=2, default=str)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
