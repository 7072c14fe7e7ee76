"""``ecar cache-latents``: encode a recipe's training images once through its autoencoder."""

from __future__ import annotations

import textwrap

from ecar.config import load_config
from ecar.device import pick_device
from ecar.latent_cache import DTYPES, cache_latents

from ecar.cli.common import formatter

def add_cache_latents(sub) -> None:
    p = sub.add_parser(
        "cache-latents",
        help="encode a recipe's training images once through its autoencoder",
        formatter_class=formatter,
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
