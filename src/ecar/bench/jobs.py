"""The models a bench compares: its jobs (a recipe to train, or a run to take as it is), each
planned and checked before anything is trained, then made into a pipeline (trained or loaded)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ecar import checkpoint as ckpt_mod
from ecar.config import Config, load_config
from ecar.pipeline import Pipeline, load
from ecar.train.trainer import train

__all__ = ["Job", "Model", "plan_jobs", "prepare", "split_ckpt_spec", "with_recipe_sampling"]


def split_ckpt_spec(spec: str) -> tuple[str, str | None]:
    """``RUN`` or ``RUN=RECIPE.yaml`` (an entry of ``ckpts``) -> (run, recipe or None)."""
    run, sep, recipe = spec.rpartition("=")
    if sep and recipe.endswith((".yaml", ".yml")):
        if not Path(recipe).is_file():
            raise FileNotFoundError(f"recipe '{recipe}' of --ckpts entry '{spec}' does not exist")
        return run, recipe
    return spec, None


def with_recipe_sampling(cfg: Config, recipe: Config, run: str) -> Config:
    """``cfg`` (a trained run's) with the ``sample`` section of ``recipe``, the recipe it was
    trained from: a recipe whose sampler changed since is benched without retraining.

    Raises CheckpointError when the recipe's model or dataset is not the run's (its weights
    would not be the recipe's).
    """
    if type(recipe.model) is not type(cfg.model) or recipe.model != cfg.model:
        raise ckpt_mod.CheckpointError(
            f"the recipe given for '{run}' describes another model ({recipe.model}) than the run's "
            f"({cfg.model}): pair each run with the recipe it was trained from")
    if recipe.data.name != cfg.data.name:
        raise ckpt_mod.CheckpointError(
            f"the recipe given for '{run}' names data '{recipe.data.name}', the run trained on "
            f"'{cfg.data.name}'")
    return dataclasses.replace(cfg, sample=dataclasses.replace(recipe.sample))


def _train_seconds_from_log(run: Path) -> float | None:
    """Last ``elapsed_s`` in a run's metrics.jsonl (for checkpoints given with ``ckpts``)."""
    f = run / "metrics.jsonl"
    if not f.is_file():
        return None
    last = None
    for line in f.read_text().splitlines():
        try:
            last = json.loads(line).get("elapsed_s", last)
        except json.JSONDecodeError:
            continue
    return last


def _unique(name: str, taken: set[str]) -> str:
    out, i = name, 2
    while out in taken:
        out, i = f"{name}-{i}", i + 1
    taken.add(out)
    return out


@dataclass
class Job:
    """One model of a bench: ``kind`` ``config`` (the recipe ``source``, loaded as ``cfg``, is
    trained into ``out/<name>/run``) or ``ckpt`` (the run ``source`` is taken as it is, sampled
    with ``recipe``'s settings when one is given)."""

    kind: str
    source: str
    name: str
    cfg: Config | None = None
    recipe: Config | None = None


def plan_jobs(configs: Sequence[str], ckpts: Sequence[str], overrides: Sequence[str], extra: Sequence[str],
              taken: set[str]) -> list[Job]:
    """The jobs of a bench, named uniquely (beside ``taken``: the names of earlier benches' rows),
    every recipe loaded and every run directory checked: a bench fails here, before any
    training. ``extra`` overrides go to the recipes that are trained (the budget, the device)."""
    jobs = [Job("config", c, _unique(Path(c).stem, taken)) for c in configs]
    for spec in ckpts:
        c, recipe = split_ckpt_spec(spec)
        p = Path(c).resolve()
        if p.parent.name == ckpt_mod.CHECKPOINTS_DIR:  # one checkpoint of a run: named by the run
            p = p.parent.parent
        stem = p.parent.name if p.name == "run" else p.name
        jobs.append(Job("ckpt", c, _unique(stem, taken),
                        recipe=None if recipe is None else load_config(recipe, list(overrides))))
    for job in jobs:
        if job.kind == "config":
            job.cfg = load_config(job.source, list(overrides) + list(extra))
        elif not Path(job.source).is_dir():
            raise ckpt_mod.CheckpointError(f"checkpoint directory '{job.source}' does not exist")
    return jobs


@dataclass
class Model:
    """A job's trained model: its pipeline (sampled with the job's settings), its run directory
    and how long it trained."""

    pipe: Pipeline
    run: Path
    train_steps: int | None
    train_seconds: float | None


def prepare(job: Job, out: Path, device: torch.device, overwrite: bool, progress: bool,
            say: Callable[[str], None], tag: str, train_minutes: float) -> Model:
    """Train a ``config`` job into ``out/<name>/run`` (or take a ``ckpt`` job's run) and load it."""
    if job.kind == "config":
        assert job.cfg is not None
        cfg = job.cfg
        run = out / job.name / "run"
        say(f"{tag}: training {cfg.model.name} for up to {train_minutes} min "
            f"(max {cfg.train.max_steps} steps) into {run}")
        summary = train(cfg, run, progress=progress, overwrite=overwrite and ckpt_mod.is_run(run))
        train_steps, train_seconds = summary["step"], summary["train_seconds"]
        say(f"{tag}: trained {train_steps} steps in {train_seconds:.1f} s")
    else:
        run = Path(job.source)
        train_steps, train_seconds = None, _train_seconds_from_log(run)
    pipe = load(run, device)
    if train_steps is None:
        train_steps = pipe.step
    if job.recipe is not None:
        pipe = pipe.with_settings(with_recipe_sampling(pipe.cfg, job.recipe, str(run)).sample)
    return Model(pipe, run, train_steps, train_seconds)
