"""One history per run (issue 29, part 2): a resume drops what the killed process logged after
the checkpoint it resumes from, in metrics.jsonl and in TensorBoard (``MetricsLog``).

A training logging every step and checkpointing every 40 is frozen (SIGSTOP) until it is
caught between a log line and the next checkpoint, then killed (SIGKILL) there. The resume
from the last checkpoint logs the same steps again; afterwards every step is in
metrics.jsonl exactly once (and in TensorBoard's events, as EventAccumulator reads them,
when tensorboard is installed).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal

import pytest

from busy import saturated
from cli_procs import RECIPE, TINY, complete_steps, finish, forkserver, metric_rows, start, wait_for
from ecar.train.metrics_log import MetricsLog

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
CKPT_EVERY = 40


def _tensorboard_scalars(tb_dir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> dict:
    """A run killed between a log line and the next checkpoint, then resumed to the end, with
    every core kept busy by other processes (issue 29: CI runners share theirs)."""
    with saturated():
        return _killed_and_resumed(tmp_path_factory)


def _killed_and_resumed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("history")
    run, logs = tmp / "run", tmp / "logs"
    logs.mkdir()
    ctx = forkserver()
    proc = start(ctx, logs / "first.log", "train", "--quiet", "--config", RECIPE, "--out", str(run), *TINY,
                 "train.max_steps=1000000", "train.log_every=1", f"train.ckpt_every={CKPT_EVERY}",
                 f"train.tensorboard={str(HAS_TENSORBOARD).lower()}")

    def caught() -> tuple[int, int] | None:
        """Freeze the run; keep it frozen when rows were logged after its last checkpoint."""
        saved = complete_steps(run)
        rows = metric_rows(run)
        if not saved or not rows or rows[-1]["step"] < saved[-1] + 3:
            return None
        os.kill(proc.pid, signal.SIGSTOP)
        saved, rows = complete_steps(run), metric_rows(run)  # as they are now that it stands still
        if rows[-1]["step"] > saved[-1] and saved[-1] % CKPT_EVERY == 0:
            return saved[-1], rows[-1]["step"]
        os.kill(proc.pid, signal.SIGCONT)  # a checkpoint came in between: try again
        return None

    checkpoint, logged = wait_for(caught, [proc], "a log line after a checkpoint")
    proc.kill()  # SIGKILL, while stopped between that log line and the next checkpoint
    proc.join()
    before = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    saved_at_kill = complete_steps(run)[-1]
    end = logged + 5
    resume = start(ctx, logs / "resume.log", "train", "--quiet", "--out", str(run), "--resume",
                   f"train.max_steps={end}")
    assert finish(resume) == 0, (logs / "resume.log").read_text()[-3000:]
    return {"run": run, "checkpoint": checkpoint, "saved_at_kill": saved_at_kill, "logged": logged,
            "end": end, "before": before, "after": (run / "metrics.jsonl").read_text().splitlines(keepends=True),
            "log": (logs / "resume.log").read_text()}


def test_kill_between_a_log_line_and_the_next_checkpoint_then_resume_logs_every_step_once(resumed):
    checkpoint, logged, end = resumed["checkpoint"], resumed["logged"], resumed["end"]
    before, after = resumed["before"], resumed["after"]
    assert resumed["saved_at_kill"] == checkpoint < logged  # killed after rows past its checkpoint
    assert [json.loads(line)["step"] for line in before[:logged]] == list(range(1, logged + 1))

    rows = [json.loads(line) for line in after]
    assert [r["step"] for r in rows] == list(range(1, end + 1))  # every step, once, in order
    assert after[:checkpoint] == before[:checkpoint]  # the history up to the checkpoint is untouched
    # the steps logged twice are the resumed process's now; resuming is exact, so same losses
    old = {json.loads(line)["step"]: json.loads(line) for line in before[checkpoint:logged]}
    for r in rows[checkpoint:logged]:
        assert r["loss"] == old[r["step"]]["loss"]
    log = resumed["log"]
    assert f"(step {checkpoint})" in log and f"dropped {logged - checkpoint} row(s) logged after step {checkpoint}" in log


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed (pip install -e '.[tensorboard]')")
def test_tensorboard_shows_every_step_once_after_the_resume(resumed):
    rows = [json.loads(line) for line in resumed["after"]]
    events = _tensorboard_scalars(resumed["run"] / "tb", "train/loss")
    assert [s for s, _ in events] == list(range(1, resumed["end"] + 1))  # each step once
    assert [v for _, v in events] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    # the killed process's events of the steps after the checkpoint are still in its file:
    # TensorBoard hides them (purge_step), nothing rewrites another process's event file
    assert len(list((resumed["run"] / "tb").glob("events.out.tfevents.*"))) == 2


def test_resume_drops_later_rows_and_a_torn_line_and_keeps_the_rest_byte_for_byte(tmp_path):
    rows = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 9)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(rows) + '{"step": 9, "lo')  # the killed process was writing step 9
    MetricsLog(tmp_path, enabled=True, tensorboard=False, resume_step=5)
    assert path.read_text() == "".join(rows[:5])
    MetricsLog(tmp_path, enabled=True, tensorboard=False, resume_step=5)  # nothing more to drop
    assert path.read_text() == "".join(rows[:5])
    MetricsLog(tmp_path, enabled=True, tensorboard=False)  # a fresh start drops nothing
    assert path.read_text() == "".join(rows[:5])
    assert not list(tmp_path.glob(".metrics.jsonl.tmp-*"))  # rewritten through a temporary file


def test_a_resumed_run_continues_its_time_budget(tmp_path):
    """A run stopped by train.max_minutes, resumed, has no time left: it trains no further step
    (before the checkpoint kept its training seconds, every resume got the whole budget again
    and restarted the time-driven schedule). Its logged elapsed time goes on from the first run's."""
    from ecar.config import load_config
    from ecar.train.trainer import train

    cfg = load_config(RECIPE, [*TINY, "train.max_steps=100000", "train.max_minutes=0.02",
                               "train.log_every=1", "train.ckpt_every=100000"])
    first = train(cfg, tmp_path / "run", progress=False)
    assert 0 < first["step"] < 100000 and first["train_seconds"] >= 1.2
    again = train(cfg, tmp_path / "run", resume=True, progress=False)
    assert again["step"] == first["step"]
    assert again["train_seconds"] >= 1.2  # the clock went on from the checkpoint's (a new one: ~0 s)
