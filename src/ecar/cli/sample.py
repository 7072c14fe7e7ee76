"""``ecar sample``: generate images from a checkpoint (a grid or one PNG per image), by
its pipeline (:func:`ecar.load`); with ``--draft``, by exact speculative decoding."""

from __future__ import annotations

import textwrap

from ecar.device import pick_device
from ecar.imageio import save_grid, save_images, save_png, to_uint8
from ecar.methods import flag_overrides
from ecar.pipeline import check_generation_fits, load
from ecar.pipeline.output import stages_strip
from ecar.serialization import check_output_dir, check_output_file

from ecar.cli.common import INTS, UsageError, add_sampler_args, formatter

def add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="generate images from a checkpoint",
        formatter_class=formatter,
        description=textwrap.dedent(
            """\
            Generate images from a trained checkpoint (EMA weights by default). Writes a PNG
            grid when --out ends in .png, else one PNG per image into the --out directory.
            Sampler settings default to those the recipe ships with.

            examples:
              ecar sample --ckpt runs/dit --n 16 --out grid.png
              ecar sample --ckpt runs/dit --n 100 --classes 3,7 --cfg 2.0 --steps 50 --out imgs/
              ecar sample --ckpt runs/ar --draft runs/ar_draft --gamma 4 --out grid.png

            --draft: exact speculative decoding (docs/speculative.md): the draft checkpoint
            (same method, data, autoencoder and token layout; `ecar draft` makes one from
            --ckpt) proposes --gamma tokens per verification; the images are samples of
            --ckpt's model, and the acceptance rate, tokens per verification, calls and
            wall-clock are printed.
            """
        ),
    )
    p.add_argument("--ckpt", required=True, help="checkpoint directory (what `ecar train --out` wrote)")
    p.add_argument("--draft", help="a smaller checkpoint of the same method and data: speculative "
                   "decoding of --ckpt's model (method ar)")
    p.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--classes", type=INTS, help="comma-separated class ids to cycle through (default: all)")
    add_sampler_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward batch")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--nrow", type=int, help="grid columns (default: number of classes, max 16)")
    p.add_argument("--stages-out", help="also write a PNG strip of every stage's result (E-CAR)")
    p.add_argument("--out", required=True,
                   help="FILE.png for a grid, or a new or empty directory for single PNGs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out / --stages-out file, or write into a non-empty directory")


def cmd_sample(args) -> int:
    if args.n < 1:
        raise UsageError("--n must be >= 1")
    device = pick_device(args.device, where="--device")
    pipe = load(args.ckpt, device, ema=not args.no_ema)
    if args.draft:
        if args.stages_out:
            raise UsageError("--stages-out and --draft exclude each other: speculative decoding yields no stages")
        pipe = pipe.with_draft(load(args.draft, device, ema=not args.no_ema))
    check_generation_fits(pipe.cfg, args.n, bool(args.stages_out), where="--n")
    sample = pipe.settings(**flag_overrides(args))
    try:
        labels = pipe.labels(args.n, args.classes)
    except ValueError as e:
        raise UsageError(str(e)) from None
    # the outputs after the arguments, before the sampling: a refusal costs nothing, changes nothing
    if args.out.lower().endswith(".png"):
        check_output_file(args.out, args.overwrite, "--out")
    else:
        check_output_dir(args.out, args.overwrite, "--out")
    if args.stages_out:
        check_output_file(args.stages_out, args.overwrite, "--stages-out")
    generate = pipe.stages if args.stages_out else pipe
    out = generate(labels=labels, sample=sample, seed=args.seed, batch_size=args.batch_size, progress=True)
    images = to_uint8(out.tensor)
    nrow = args.nrow or min(16, len(set(labels.tolist())))
    if args.out.lower().endswith(".png"):
        path = save_grid(images, args.out, nrow=nrow)
        print(f"wrote a grid of {len(images)} images to {path}")
    else:
        paths = save_images(images, args.out)
        print(f"wrote {len(paths)} images to {args.out}/")
    if out.speculative is not None:
        st = out.speculative
        print(f"speculative decoding (gamma {vars(out.sample).get('gamma')}): {gamma_summary(st['choices'])}")
        print(f"acceptance rate {st['acceptance_rate']:.3f}, "
              f"{st['tokens_per_round']:.2f} tokens per verification, "
              f"{st['tokens_per_target_pass']:.2f} tokens per target pass; target: {st['target_passes']} passes, "
              f"{st['target_head_calls']} head calls; draft: {st['draft_passes']} passes, "
              f"{st['draft_head_calls']} head calls; {st['residual_tokens']} residual samples from "
              f"{st['residual_candidates']} candidates; {st['seconds']:.2f} s sampling")
    if out.stages is not None:
        save_png(stages_strip(out.stages, max_rows=min(8, args.n)), args.stages_out)
        print(f"wrote the stage strip to {args.stages_out}")
    return 0


def gamma_summary(choices: list[dict]) -> str:
    """What γ each sampling call ran with and, where it was chosen (gamma auto), why: the
    acceptance (measured on the call's first tokens, or pooled over earlier calls when the
    pipeline remembered this batch size) and the predicted speed-up over plain decoding."""
    parts = []
    for c in choices:
        text = f"batch {c['batch']}: gamma {c['gamma']}" + (" (plain decoding)" if c["gamma"] == 0 else "")
        if "acceptance" in c:
            where = ("pooled over earlier calls" if c.get("remembered")
                     else f"measured on the first {c['start']} tokens")
            text += (f", chosen at acceptance {c['acceptance']:.3f} {where}, "
                     f"predicted {c['predicted_speedup']:.2f}x plain")
        parts.append(text)
    if len(parts) > 4:  # many batches: the distinct choices
        seen = sorted({(c["batch"], c["gamma"]) for c in choices})
        return f"{len(parts)} calls; " + ", ".join(f"batch {b}: gamma {g}" for b, g in seen) + "; first: " + parts[0]
    return "; ".join(parts)
