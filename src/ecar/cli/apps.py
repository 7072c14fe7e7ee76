"""The application commands built on the model commands: ``bench``, ``demo``, ``serve``."""

from __future__ import annotations

import shlex
import sys
import textwrap
from pathlib import Path

from ecar.bench import run_bench
from ecar.demo import DEFAULT_MINUTES, demo_checkpoint, run_demo
from ecar.device import pick_device
from ecar.serve import ServeError, load_slots, require_web, run_server

from ecar.cli.common import INTS, NAMES, NUMBERS, UsageError, formatter


def add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="train recipes for the same time budget and compare quality against cost",
        formatter_class=formatter,
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
              ecar bench --configs configs/fashion_xar.yaml --train-minutes 15 --n-eval 500 \\
                  --with benchmarks/results/fashion_bench --out bench/fashion_xar
            """
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--configs", nargs="+", help="recipes to train and compare (first = baseline)")
    src.add_argument("--ckpts", nargs="+", metavar="RUN[=RECIPE]",
                     help="existing checkpoints to compare instead; RUN=RECIPE.yaml samples RUN with the "
                          "recipe's sample section (the recipe RUN was trained from, its sampler changed)")
    p.add_argument("--train-minutes", type=float, default=5.0, help="training budget per recipe")
    p.add_argument("--out", default="bench", help="output directory, new or empty (default: bench)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the output (reports and runs) of an earlier bench in --out")
    p.add_argument("--n-eval", type=int, default=1000, help="images per evaluation (default 1000)")
    p.add_argument("--sweep", type=NUMBERS, default="0.1,0.2,0.5,1,2",
                   help="multipliers of the shipped step counts (each > 0)")
    p.add_argument("--samplers", type=NAMES, default="euler,heun",
                   help="samplers of the sweep (default euler,heun)")
    p.add_argument("--seeds", type=INTS, default="0,1,2", help="sampling seeds; FID is mean ± std over them")
    p.add_argument("--reference-split", choices=("train", "heldout"),
                   help="real split to compare with (default: heldout where the dataset has one)")
    p.add_argument("--features", help="feature network (default: by dataset)")
    p.add_argument("--draft", help="a draft checkpoint: also sample every model by speculative decoding "
                   "at its shipped setting and report acceptance, tokens per target pass, calls, FID (method ar)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--with", dest="previous", nargs="+", default=[], metavar="BENCH_JSON",
                   help="earlier benches (bench.json or its directory) whose rows are reported beside "
                        "these; they must share the budget, --n-eval, --seeds and the machine")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="overrides for every recipe")


def cmd_bench(args) -> int:
    # --sweep, --samplers, --seeds: parsed into lists by argparse, every entry checked by
    # cli.common.check_args with its scalar's rule, before anything is trained
    try:
        rows = run_bench(
            configs=args.configs, ckpts=args.ckpts, train_minutes=args.train_minutes, out=args.out,
            overrides=args.overrides, n_eval=args.n_eval, step_sweep=args.sweep, device=args.device,
            progress=not args.quiet, features=args.features, command=shlex.join(["ecar", *args.argv]),
            seeds=args.seeds or [0], samplers=args.samplers,
            reference_split=args.reference_split, overwrite=args.overwrite, draft=args.draft,
            previous=args.previous,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None
    out = Path(args.out)
    print(f"{len(rows)} rows: {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return 0


def add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="train E-CAR on digits for a few minutes and show what it makes",
        formatter_class=formatter,
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


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="a local web page: pick a class, generate, watch the stages appear",
        formatter_class=formatter,
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
