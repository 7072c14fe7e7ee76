"""``ecar draft``: make a draft for exact speculative decoding of a checkpoint, as its method's
drafting declares (:attr:`ecar.methods.Method.drafting`; docs/speculative.md)."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

from tqdm.auto import tqdm

from ecar.checkpoint import save_checkpoint
from ecar.device import pick_device
from ecar.lock import check_not_locked, writer_lock
from ecar.methods import drafted_methods, flag_overrides
from ecar.pipeline import load
from ecar.serialization import atomic_write, entries

from ecar.cli.common import UsageError, add_sampler_args, formatter

def add_draft(sub) -> None:
    p = sub.add_parser(
        "draft",
        help="distil a speculative draft for a checkpoint of a method that can be drafted (ar)",
        formatter_class=formatter,
        description=textwrap.dedent(
            """\
            Make a draft for exact speculative decoding (docs/speculative.md): the target's own
            transformer (frozen) with a Gaussian-mixture head whose flow velocity is closed form,
            distilled on the target's own guided chains to minimise the path KL that sets the
            acceptance rate. Distil with the sampler settings you will sample with (the flags
            below; default: the target's recipe).

            examples:
              ecar draft --ckpt runs/ar --out runs/ar_draft
              ecar sample --ckpt runs/ar --draft runs/ar_draft --out grid.png

            Writes a run (a checkpoint of the ar method with model.head_type=mixture) and
            draft.json in it: the distillation's losses, the held-out path KL per chain step and
            the probability that step verification accepts a whole token, a proxy of the
            acceptance rate.
            """
        ),
    )
    p.add_argument("--ckpt", required=True, help="the target ar checkpoint")
    p.add_argument("--out", required=True, help="new or empty run directory for the draft")
    p.add_argument("--distill-steps", type=int, default=4000, help="distillation steps (default 4000)")
    p.add_argument("--batch", type=int, default=8, help="target samples per step (all positions of each; default 8)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--components", type=int, default=32, help="mixture components per token (default 32)")
    p.add_argument("--width", type=int, default=512, help="width of the mixture head's MLP (default 512)")
    p.add_argument("--pool", type=int, default=2000, help="target samples drawn once as prefixes (default 2000)")
    add_sampler_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_draft(args) -> int:
    if not args.lr > 0:  # the integer flags' ranges: cli.common.check_args
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    device = pick_device(args.device, where="--device")
    out = Path(args.out)

    def check_out() -> None:
        if out.exists() and (not out.is_dir() or entries(out)):
            raise UsageError(f"--out '{out}' exists and is not an empty directory; choose a new one for the draft")

    check_not_locked(out, "draft run directory")  # before loading anything: refused at once
    check_out()
    target = load(args.ckpt, device)
    drafting = target.method.drafting
    if drafting is None:
        can = ", ".join(drafted_methods()) or "none"
        raise UsageError(f"{args.ckpt} is a {target.method.name} checkpoint, a method that cannot be drafted "
                         f"(methods that can: {can}; docs/speculative.md)")
    sample = target.settings(**flag_overrides(args))
    drafting.check_settings(sample)
    with writer_lock(out, "draft run directory", check_out):  # one writer (ecar.lock)
        draft, model_cfg = drafting.make_draft(target.model, target.cfg.model, args.components, args.width, args.seed)
        dcfg = dataclasses.replace(target.cfg, model=model_cfg, sample=sample)
        bar = tqdm(total=args.distill_steps, desc="draft", disable=args.quiet)

        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(path_kl=f"{loss:.3f}")

        res = drafting.distill(target.model, draft, sample, steps=args.distill_steps, batch=args.batch, lr=args.lr,
                               pool=args.pool, seed=args.seed, on_step=on_step)
        bar.close()
        save_checkpoint(out, model=draft, ema=draft, cfg=dcfg, step=args.distill_steps, train_state={})
        tail = res["losses"][-50:]
        report = {"target": str(args.ckpt), "steps": args.distill_steps, "batch": args.batch, "components": args.components,
                  "width": args.width, "pool": args.pool, "final_path_kl": sum(tail) / len(tail), **res}
        atomic_write(out / "draft.json", (json.dumps(report, indent=2) + "\n").encode())
    print(f"distilled a {args.components}-component draft head in {args.distill_steps} steps: held-out path KL per token "
          f"{sum(res['held_out_kl_per_step']):.3f}, acceptance proxy {res['held_out_acceptance_proxy']:.3f}")
    print(f"next: ecar sample --ckpt {args.ckpt} --draft {out} --out {out}/grid.png")
    return 0
