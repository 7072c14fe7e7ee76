"""What a bench writes and reads: its output folder (checked before anything is trained),
``bench.json`` / ``bench.md`` / ``bench.png`` / ``anatomy.png``, and the rows of earlier benches
reported beside a new one (``ecar bench --with``)."""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
from pathlib import Path
from typing import Sequence

import torch

from ecar import checkpoint as ckpt_mod
from ecar.bench.report import (anatomy_markdown, bench_table_markdown, headline_markdown, plot_anatomy, plot_bench,
                               summarize)
from ecar.errors import OutputExistsError
from ecar.serialization import is_empty_dir

__all__ = ["BENCH_OUTPUTS", "check_bench_out", "device_name", "load_previous", "rebuild_command", "write_outputs"]

log = logging.getLogger("ecar.bench")

BENCH_OUTPUTS = ("bench.json", "bench.json.tmp", "bench.md", "bench.png", "anatomy.png")
"""The reports :func:`~ecar.bench.run.run_bench` writes into ``out`` (beside one ``<name>/run`` per recipe)."""


def load_previous(paths: Sequence[str | Path], train_minutes: float, n_eval: int, seeds: Sequence[int],
                  device_name: str, reference_split: str | None) -> tuple[list[dict], list[dict]]:
    """Rows of earlier benches to report beside this one (``ecar bench --with``), and a record
    of each (path, command, date) for the metadata.

    A row is comparable only if it was measured the same way: the same training budget,
    samples per setting, sampling seeds, reference split and machine (``meta.device``, which
    names the device and its threads; time per image is only comparable on one machine).
    Anything else raises ValueError saying what differs.
    """
    rows: list[dict] = []
    records: list[dict] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / "bench.json"
        try:
            doc = json.loads(path.read_text())
            meta, prev = doc["meta"], doc["rows"]
            a = meta["args"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"--with {path}: not a bench.json written by ecar bench ({e})") from None
        want = {"train budget (--train-minutes)": (float(a["train_minutes"]), float(train_minutes)),
                "samples per setting (--n-eval)": (int(a["n_eval"]), int(n_eval)),
                "sampling seeds (--seeds)": (list(a["seeds"]), [int(v) for v in seeds]),
                "reference split (--reference-split)": (a.get("reference_split"), reference_split),
                "machine": (meta.get("device"), device_name)}
        differ = [f"{k}: {old!r} there, {new!r} here" for k, (old, new) in want.items() if old != new]
        if differ:
            raise ValueError(f"--with {path} was measured differently, so its rows cannot stand beside "
                             f"these ({'; '.join(differ)}). Rerun with its settings on its machine, or "
                             "bench all recipes together.")
        rows += [dict(r, bench=str(path)) for r in prev]
        records.append({"path": str(path), "command": meta.get("command"), "date": meta.get("date")})
    return rows, records


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"{device.type} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _is_bench_output(out: Path) -> bool:
    """Whether every entry of ``out`` is a report or a ``<name>/run`` of an earlier bench, and
    there is evidence of one (a ``bench.json`` with its ``meta``, or a run)."""
    evidence = False
    for p in out.iterdir():
        if p.name in BENCH_OUTPUTS and p.is_file():
            if p.name == "bench.json":
                try:
                    evidence |= "meta" in json.loads(p.read_text())
                except (OSError, ValueError, TypeError):
                    return False
            continue
        if p.is_dir() and {q.name for q in p.iterdir()} <= {"run"}:
            if not (p / "run").exists():
                continue
            if ckpt_mod.is_run(p / "run"):
                evidence = True
                continue
        return False
    return evidence


def check_bench_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is not new or empty, unless it holds an earlier bench's output
    and ``overwrite`` is given (then its reports and the runs of this bench's recipes are
    replaced). A directory with anything else is someone else's: refused, flag or not."""
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out '{out}' exists and is not a directory; choose another --out")
    if not out.is_dir() or is_empty_dir(out):
        return
    if not _is_bench_output(out):
        names = sorted(p.name for p in out.iterdir())
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise OutputExistsError(
            f"--out '{out}' holds files that are not an earlier bench's output ({shown}); "
            "choose a new or empty --out"
        )
    if not overwrite:
        raise OutputExistsError(
            f"--out '{out}' already holds the output of an earlier `ecar bench`; pass --overwrite "
            "to replace it (its reports, and the runs of the recipes trained again), evaluate "
            "its runs as they are with --ckpts, or choose another --out"
        )
    log.info("--overwrite: replacing the earlier bench output in %s", out)


def write_outputs(out: Path, rows: list[dict], meta: dict, plot: bool = True) -> dict:
    """bench.json and bench.md (after every model), bench.png (when ``plot``)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows)
    tmp = out / "bench.json.tmp"
    tmp.write_text(json.dumps({"meta": meta, "methods": summary, "rows": rows}, indent=2,
                              default=str) + "\n")
    os.replace(tmp, out / "bench.json")
    a = meta["args"]
    splits = sorted({str(r.get("reference_split")) for r in rows})
    head = (
        "# ecar bench\n\n"
        f"Command: `{meta['command']}`  \n"
        f"Date: {meta['date']} · device: {meta['device']} · torch {meta['torch']} · "
        f"ecar {meta['ecar']}  \n"
        f"Training budget: {a['train_minutes']} min per recipe (max_steps still caps) · "
        f"FID/precision/recall on {a['n_eval']} samples per seed, seeds {list(a['seeds'])}, "
        f"features: {', '.join(meta['features']) or '–'}, reference split: {', '.join(splits)} · "
        f"samplers {list(a['samplers'])} × step sweep ×{list(a['step_sweep'])} of each model's "
        "shipped steps.\n\n"
        "## Equal quality\n\n"
        "At each model's shipped setting: the other model's cost to reach the same mean FID "
        "along its Pareto frontier (interpolated in log cost; `>`/`<` = bound, never "
        "extrapolated) ÷ this model's cost, and the other model's frontier FID at this "
        "model's GFLOPs (verdict beyond one std of the difference).\n\n"
        + headline_markdown(summary) + "\n## Every setting\n\n"
    )
    (out / "bench.md").write_text(head + bench_table_markdown(rows, summary)
                                  + "\n![FID vs cost per image](bench.png)\n\n"
                                  + anatomy_markdown(rows)
                                  + ("\n![GFLOPs per image by stage and part](anatomy.png)\n" if plot else ""))
    if plot:
        plot_anatomy(rows, out / "anatomy.png")
        title = (f"FID vs sampling cost — {a['train_minutes']} min training each, "
                 f"n={a['n_eval']} samples × {len(a['seeds'])} seeds (±1 std)")
        plot_bench(rows, out / "bench.png", title=title)
    return summary


def rebuild_command(configs, ckpts, train_minutes, out, overrides, n_eval, step_sweep, device,
                    seeds, samplers, previous=()) -> str:
    parts = ["ecar", "bench"]
    if configs:
        parts += ["--configs", *configs]
    if ckpts:
        parts += ["--ckpts", *ckpts]
    parts += ["--train-minutes", f"{train_minutes:g}", "--n-eval", str(n_eval),
              "--sweep", ",".join(f"{f:g}" for f in step_sweep),
              "--seeds", ",".join(str(s) for s in seeds), "--samplers", ",".join(samplers),
              "--out", str(out)]
    if device != "auto":
        parts += ["--device", device]
    if previous:
        parts += ["--with", *(str(p) for p in previous)]
    parts += list(overrides)
    return shlex.join(parts)
