"""``ecar bench``: train recipes for the same budget and compare quality against cost."""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

from ecar.bench import run_bench

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
