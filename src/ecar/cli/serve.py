"""``ecar serve``: a local web page to generate images and watch their stages appear."""

from __future__ import annotations

import sys
import textwrap

from ecar.demo import demo_checkpoint
from ecar.device import pick_device
from ecar.serve import ServeError, load_slots, require_web, run_server

from ecar.cli.common import UsageError, formatter

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
    p.add_argument("--draft", help="a draft checkpoint (ecar draft): the models it fits sample by exact "
                                   "speculative decoding, and their settings include γ")
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
                                 f"`ecar demo` (trains E-CAR on Fashion-MNIST images in about 5 minutes), or pass "
                                 f"--ckpt DIR of a run `ecar train` wrote")
            ckpts = [str(default)]
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {args.host}: anyone who can reach it can run generations "
                  f"(the page has no login)", file=sys.stderr)
        slots = load_slots(ckpts, pick_device(args.device), use_ema=not args.no_ema, draft=args.draft)
        names = ", ".join(f"{s.pipe.name} ({s.ckpt})" for s in slots)
        how = f"http://{args.host}:{args.port}"
        stopped = run_server(slots, args.host, args.port,
                             on_ready=f"ecar serve: {names} on {how} (Ctrl+C to stop)")
    except ServeError as e:
        raise UsageError(str(e)) from None
    print(f"ecar serve: stopped ({stopped})", flush=True)
    return 0
