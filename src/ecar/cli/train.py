"""``ecar train``: train a model from a recipe (one process, or many under torchrun)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

from ecar.checkpoint import CONFIG_FILE, find_checkpoint
from ecar.config import config_from_dict, load_config, load_yaml, merge_overrides
from ecar.lock import check_not_locked
from ecar.train.trainer import check_run_dir, is_main_process, train

from ecar.cli.common import UsageError, formatter

def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML recipe",
        formatter_class=formatter,
        description=textwrap.dedent(
            """\
            Train a model from a recipe in configs/. Any config value can be overridden
            with section.key=value. Runs on one CPU/GPU as is, and on many processes under
            torchrun with the same arguments (gloo on CPU, NCCL on GPU); train.parallel=fsdp
            shards parameters, gradients, optimizer state and EMA over them (FSDP2). A run
            resumes on any number of processes.

            examples:
              ecar train --config configs/digits_dit.yaml --out runs/dit
              ecar train --config configs/digits_dit.yaml --out runs/dit train.max_steps=40
              ecar train --out runs/dit --resume                 # continue where it stopped
              ecar train --config configs/digits_dit.yaml --out runs/dit --overwrite  # start it anew
              torchrun --nproc_per_node=2 -m ecar train --config configs/digits_dit.yaml --out runs/ddp
              torchrun --nproc_per_node=2 -m ecar train --config configs/digits_dit.yaml --out runs/fsdp train.parallel=fsdp

            --out must be new or empty, or an earlier run: continued with --resume, or
            replaced with --overwrite. A directory holding other files is never written into.
            One writer at a time: while a training writes a run, another one into it is
            refused at once, naming it (PID, host, command, since when); sample, eval, info
            and serve can read it meanwhile. A resume drops the metrics rows (and TensorBoard
            events) that the interrupted run logged after its last checkpoint.
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
        if is_main_process():  # a run being written is refused naming its writer, not for its state
            check_not_locked(args.out, "run directory")
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
