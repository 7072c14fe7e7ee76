"""The training loop shared by every method.

One code path: single-process CPU, or ``torchrun`` (DDP or FSDP2; gloo on CPU, NCCL on
GPU). The objective (network + loss) is wrapped by :class:`ecar.train.parallel.Parallel`
and nowhere else; EMA, checkpoints, logging and sample grids live here too. Randomness of
step s comes from a generator per micro-batch shard, seeded with (seed, s, j) where
j = micro-step · ranks + rank is the shard's place in the step's global batch: a resumed
run draws exactly the noise and times it would have drawn without the interruption, and
W ranks with A accumulation steps draw what one process with W·A steps draws.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ecar import checkpoint as ckpt
from ecar.autoencoders import build_autoencoder
from ecar.build import build_data, build_model, latent_spec, resolved_data
from ecar.config import Config, ConfigError
from ecar.errors import OutputExistsError
from ecar.imageio import save_grid, to_uint8
from ecar.latent_cache import check_cache_autoencoder
from ecar.lock import writer_lock
from ecar.pipeline import Pipeline
from ecar.serialization import entries, is_empty_dir, remove_tree
from ecar.train.data_order import BatchStream
from ecar.train.distributed import DistInfo, all_reduce_max, all_reduce_mean, barrier, cleanup, init_distributed
from ecar.train.ema import ema_decay, make_ema, update_ema
from ecar.train.metrics_log import MetricsLog
from ecar.train.parallel import Parallel

log = logging.getLogger("ecar.train")

RUN_OUTPUTS = ("metrics.jsonl", "samples", "tb")
"""What the trainer writes into a run directory beside the checkpoints (:mod:`ecar.checkpoint`)."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the last good checkpoint was left untouched."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C / SIGTERM: a checkpoint of the last completed step was saved."""


def lr_factor(step: int, cfg: Config, time_fraction: float = 0.0) -> float:
    """Multiplier of ``train.lr`` at optimiser step ``step`` (linear warm-up, then cosine/constant).

    ``time_fraction`` (elapsed / budget, for runs with ``train.max_minutes``) advances the
    cosine when the time budget, not max_steps, will end the run.
    """
    t = cfg.train
    if t.warmup_steps > 0 and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return 1.0
    span = max(1, t.max_steps - t.warmup_steps)
    progress = min(1.0, max((step - t.warmup_steps) / span, time_fraction))
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _progress_bar(max_steps: int, start: int, budget_s: float, spent: float, show: bool) -> tqdm:
    """The training progress bar: steps out of ``train.max_steps``, or, with a time budget,
    seconds out of the budget (a budget of minutes ends a run long before a max_steps of
    100,000 would, and a bar at 0 % with hours to go tells a user nothing)."""
    if budget_s:
        return tqdm(total=budget_s, initial=min(spent, budget_s), desc="train", disable=not show,
                    dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} "
                    f"of a {budget_s / 60:g}-minute budget{{postfix}}")
    return tqdm(total=max_steps, initial=start, desc="train", disable=not show, dynamic_ncols=True)


def step_generator(seed: int, step: int, shard: int, device: torch.device) -> torch.Generator:
    """The generator of micro-batch shard ``shard`` = micro-step · ranks + rank of ``step``.

    The shard index is the shard's place in the step's global batch (whose data are
    positions in the same order, :mod:`ecar.train.data_order`), so the noise of an image
    does not depend on how the global batch is split between ranks and micro-steps.
    """
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + step) * 1_009 + shard * 101 + 1)
    return g


def _autocast(device: torch.device, precision: str):
    if precision != "bf16":
        return nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        log.warning("bf16 is not supported on this GPU; training in fp32")
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag checked between steps."""

    def __init__(self) -> None:
        self.stop = False
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train(cfg: Config, out: str | Path, resume: bool = False, progress: bool = True,
          overwrite: bool = False) -> dict:
    """Train ``cfg`` into run directory ``out``; returns a summary dict (rank 0's view).

    ``out`` must be new or empty, or hold an ecar run: continued with ``resume``, replaced
    with ``overwrite`` (:func:`check_run_dir`). Raises :class:`TrainingDiverged` on a
    non-finite loss, :class:`TrainingInterrupted` on Ctrl-C (after saving),
    :class:`ecar.checkpoint.CheckpointError` on a bad resume and
    :class:`ecar.errors.OutputExistsError` for a directory it must not write into.
    """
    out = Path(out)
    # Rank 0 holds the run's lock (ecar.lock) from before anything is written to the end; a
    # second writer is refused naming it. The checks run before init_distributed, whose
    # rendezvous waits for every rank: no rank can have written into ``out`` yet (but rank 0's
    # lock file, which emptiness checks ignore) when any rank looks at it.
    with writer_lock(out, "run directory", lambda: check_run_dir(out, resume, overwrite),
                     enabled=is_main_process()) as replacing:
        dist_info = init_distributed(cfg.train.device)
        try:
            summary = _train(cfg, out, resume, replacing, progress, dist_info)
            barrier()  # every rank done (rank 0 may still have been sampling) before gloo/NCCL teardown
            return summary
        finally:
            cleanup()


def is_main_process() -> bool:
    """Rank 0 of a torchrun group, or a single process (before the process group exists)."""
    return int(os.environ.get("RANK", "0")) == 0


def _names(directory: Path, limit: int = 3) -> str:
    names = sorted(p.name for p in entries(directory))
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _describe_run(run: Path) -> str:
    try:
        return f"checkpoint at step {ckpt.find_checkpoint(run).step}"
    except ckpt.CheckpointError:
        return "no checkpoint that loads"


def check_run_dir(out: Path, resume: bool, overwrite: bool) -> str | None:
    """Decide, before anything is written, whether training may write into ``out``.

    Allowed: a new or empty directory; an ecar run (:func:`ecar.checkpoint.is_run`) with
    ``resume``, or with ``overwrite`` to replace it (returns what it replaces, for the log).
    A directory holding anything else is refused with or without ``overwrite``: those files
    are someone else's, and no flag of ours may destroy them.
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other: continue the run, or replace it")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"run directory '{out}' exists and is not a directory; choose another --out")
    if resume:
        if not out.exists():
            raise ckpt.CheckpointError(f"cannot resume: run directory '{out}' does not exist")
        if not ckpt.is_run(out):
            raise ckpt.CheckpointError(
                f"cannot resume '{out}': it is not an ecar run (no {ckpt.RUN_MARKER}, no "
                f"{ckpt.CHECKPOINTS_DIR}/); pass the directory that `ecar train --out` wrote"
            )
        return None
    if not out.exists() or is_empty_dir(out):
        return None
    if not ckpt.is_run(out):
        raise OutputExistsError(
            f"run directory '{out}' is not empty and is not an ecar run (it holds {_names(out)}); "
            "training writes only into a new or empty directory or into an earlier ecar run. "
            "Choose another --out"
        )
    what = _describe_run(out)
    if not overwrite:
        raise OutputExistsError(
            f"'{out}' already holds an ecar run ({what}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    return what


def _replace_run(out: Path, what: str) -> None:
    """Remove the entries of an earlier run (its checkpoints, metrics, samples; nothing else)."""
    entries = ckpt.run_entries(out) + [out / n for n in RUN_OUTPUTS if (out / n).exists()]
    log.info("--overwrite: replacing the ecar run in %s (%s): removing %s", out, what,
             ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries))
    for p in entries:
        if p.is_dir() and not p.is_symlink():
            remove_tree(p)
        else:
            p.unlink()


def _train(cfg: Config, out: Path, resume: bool, replacing: str | None, progress: bool,
           di: DistInfo) -> dict:
    t = cfg.train
    device = di.device
    torch.manual_seed(t.seed + di.rank)
    dataset = build_data(cfg.data, "train")
    cfg = dataclasses.replace(cfg, data=resolved_data(cfg.data, dataset))  # recorded in checkpoints
    assert cfg.data.channels is not None and cfg.data.num_classes is not None  # resolved from the dataset
    ae = build_autoencoder(cfg.autoencoder, cfg.data.channels).to(device).eval()
    check_cache_autoencoder(dataset, ae, cfg.autoencoder)
    encode = not getattr(dataset, "yields_latents", False)  # a latent cache is encoded already
    model, method = build_model(cfg, latent_spec(cfg, ae))
    model.to(device)
    par = Parallel(t.parallel, di, t.compile)
    par.prepare(model)
    ema = make_ema(model)
    objective = method.objective(model, cfg.flow).to(device)
    wrapped = par.wrap(objective, ema)  # before the optimizer: FSDP replaces the parameters
    opt = torch.optim.AdamW(
        model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay
    )

    start, spent = 0, 0.0
    if resume:
        start, spent = _restore(out, cfg, model, ema, opt, par)
    if di.is_main:
        if replacing is not None:
            _replace_run(out, replacing)
        out.mkdir(parents=True, exist_ok=True)
        ckpt.mark_run(out)  # first, so that a run killed before its first checkpoint is still ours

    micro_global = t.batch_size // t.grad_accum
    if t.batch_size % (t.grad_accum * di.world):
        raise ConfigError(
            f"train.batch_size={t.batch_size} must be divisible by grad_accum×ranks "
            f"= {t.grad_accum}×{di.world}"
        )
    stream = BatchStream(len(dataset), micro_global, t.seed, di.rank, di.world, start * t.grad_accum)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=stream, num_workers=cfg.data.num_workers,
        persistent_workers=cfg.data.num_workers > 0,
    )
    batches = iter(loader)
    params = sum(p.numel() for p in model.parameters())  # DTensors count their global size
    metrics = MetricsLog(out, di.is_main, t.tensorboard, resume_step=start if resume else None)
    if di.is_main:
        log.info("model %s: %.2fM parameters on %s, %d rank(s), train.parallel=%s", cfg.model.name,
                 params / 1e6, device, di.world, t.parallel)

    def save(step: int) -> None:  # every rank calls it (fsdp ranks write their shards)
        state = {
            "lr": opt.param_groups[0]["lr"],  # the schedule itself is a function of the step
            "rng_cpu": torch.get_rng_state(),
            "batches_seen": step * t.grad_accum,
            "world_size": di.world,
            # training seconds so far: a resumed run continues its train.max_minutes budget
            # (and the time-driven schedule) where it stopped instead of starting it again
            "train_seconds": time.perf_counter() - t_start,
        }
        if torch.cuda.is_available():
            state["rng_cuda"] = torch.cuda.get_rng_state_all()
        par.save(out, model=model, ema=ema, opt=opt, cfg=cfg, step=step, state=state)

    def preview(step: int) -> None:
        with par.sampling_ema(ema) as sampler:  # every rank: gathering a sharded EMA is collective
            if not di.is_main:
                return
            n = min(4 * int(cfg.data.num_classes or 0), 40)
            imgs = Pipeline(sampler, cfg, ae)(n, seed=0, batch_size=n).tensor
        save_grid(to_uint8(imgs), out / "samples" / f"step_{step:07d}.png", nrow=cfg.data.num_classes)

    step, last_saved, tic, seen = start, start if resume else None, time.perf_counter(), 0
    t_start = time.perf_counter() - spent  # a resumed run's clock goes on from its checkpoint
    budget_s = t.max_minutes * 60.0
    bar = _progress_bar(t.max_steps, start, budget_s, spent, progress and di.is_main)
    with _StopFlag() as stopper:
        while step < t.max_steps:
            time_fraction = (time.perf_counter() - t_start) / budget_s if budget_s else 0.0
            if budget_s and di.world > 1:  # every rank must agree on the schedule and the stop
                time_fraction = all_reduce_max(torch.tensor(time_fraction, device=device)).item()
            if time_fraction >= 1.0:
                log.info("time budget of %.1f min reached at step %d", t.max_minutes, step)
                break
            lr = t.lr * lr_factor(step, cfg, time_fraction)
            for group in opt.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(t.grad_accum):
                x, y = next(batches)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if encode:
                    with torch.no_grad():
                        x = ae.encode(x)
                gen = step_generator(t.seed, step, micro * di.world + di.rank, device)
                with par.no_sync(micro == t.grad_accum - 1), _autocast(device, t.precision):
                    losses = wrapped(x, y, gen)
                    loss = losses["loss"] / t.grad_accum
                loss.backward()
                loss_sum += loss.detach()
                parts = {k: v.detach() for k, v in losses.items() if k != "loss"}
                seen += x.shape[0] * di.world
            loss_avg = all_reduce_mean(loss_sum)
            if not torch.isfinite(loss_avg):
                opt.zero_grad(set_to_none=True)
                where = f"the last good checkpoint (step {last_saved}) in {out} is intact" if last_saved is not None else "no checkpoint had been saved yet"
                raise TrainingDiverged(
                    f"loss became {loss_avg.item()} at step {step}; stopping. {where}. "
                    "Try a lower train.lr, train.grad_clip > 0, or train.precision=fp32."
                )
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                if t.grad_clip > 0 else torch.zeros(())
            )
            opt.step()
            opt.zero_grad(set_to_none=True)
            update_ema(ema, model, ema_decay(step, t.ema_decay, t.ema_warmup))
            step += 1
            if budget_s:  # the bar shows the time budget's progress (it ends the run first)
                bar.update(min(budget_s, time.perf_counter() - t_start) - bar.n)
            else:
                bar.update(1)

            if step % t.log_every == 0 or step == t.max_steps:
                elapsed = time.perf_counter() - tic
                row = {
                    "step": step, "loss": loss_avg.item(), "lr": lr,
                    "grad_norm": par.scalar(grad_norm), "images_per_s": seen / max(elapsed, 1e-9),
                    "elapsed_s": time.perf_counter() - t_start,
                    **{k: all_reduce_mean(v).item() for k, v in parts.items()},
                }
                metrics.write(row)
                bar.set_postfix(step=step, loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
                tic, seen = time.perf_counter(), 0
            if t.ckpt_every and step % t.ckpt_every == 0 and step < t.max_steps:
                save(step)
                last_saved = step
            if t.sample_every and step % t.sample_every == 0 and step < t.max_steps:
                preview(step)
            stop = all_reduce_max(torch.tensor(float(stopper.stop), device=device)).item() > 0
            if stop:
                if last_saved != step:
                    save(step)
                bar.close()
                metrics.close()
                raise TrainingInterrupted(
                    f"interrupted at step {step}; checkpoint saved in {out}. "
                    "Continue with the same command plus --resume."
                )
    bar.close()
    if last_saved != step:  # not twice for one step (a resume at max_steps trains nothing)
        save(step)
    preview(step)
    metrics.close()
    return {
        "step": step, "params": params, "out": str(out),
        "train_seconds": time.perf_counter() - t_start,
    }


def _restore(out: Path, cfg: Config, model, ema, opt, par: Parallel) -> tuple[int, float]:
    ck = ckpt.load_checkpoint(out, with_state=True)  # the newest that loads; skipped ones are logged
    saved = ck.cfg
    if type(saved.model) is not type(cfg.model) or saved.model != cfg.model:
        raise ckpt.CheckpointError(
            f"cannot resume {out}: its model config ({saved.model}) differs from this run's ({cfg.model})"
        )
    if saved.data.name != cfg.data.name:
        raise ckpt.CheckpointError(
            f"cannot resume {out}: it trained on data '{saved.data.name}', this run names '{cfg.data.name}'"
        )
    par.restore(ck, model, ema, opt)
    assert ck.train_state is not None  # loaded with_state
    torch.set_rng_state(ck.train_state["rng_cpu"])
    log.info("resuming from %s (step %d)", ck.directory, ck.step)
    if ck.step >= cfg.train.max_steps:
        log.warning("checkpoint is at step %d >= train.max_steps=%d: nothing to do", ck.step, cfg.train.max_steps)
    return ck.step, float(ck.train_state.get("train_seconds", 0.0))  # older checkpoints: 0
