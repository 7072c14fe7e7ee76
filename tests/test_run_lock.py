"""One writer per run, latent cache and demo folder (issue 29, part 1; src/ecar/lock.py).

The acceptance test starts two trainings of the same run at once, as a scheduler's retry or a
second terminal would: exactly one trains, the other exits 1 at once with one ``error:`` line
that names the holder (PID, host, command, since when), and every checkpoint and metrics row
of the run is the one's. Readers are not blocked meanwhile. After a SIGKILL of the holder the
lock has died with it: the next ``--resume`` proceeds.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import yaml

from cli_procs import (
    RECIPE,
    TINY,
    complete_steps,
    error_lines,
    finish,
    forkserver,
    metric_rows,
    start,
    wait_for,
)
from ecar.cli import EXIT_FAIL, main
from ecar.errors import OutputInUseError
from ecar.lock import LOCK_NAME, WriterLock, check_not_locked

ARGS = [*TINY, "train.max_steps=1000000", "train.log_every=1", "train.ckpt_every=20",
        "train.tensorboard=false"]


@pytest.fixture(scope="module")
def spawner():
    return forkserver()


def _seed_of(checkpoint_dir) -> int:
    return yaml.safe_load((checkpoint_dir / "config.yaml").read_text())["train"]["seed"]


def _assert_names_holder(text: str, holder_pid: int, command_part: str) -> None:
    """One ``error:`` line, no traceback, naming the holder's PID, host, command and start."""
    errors = error_lines(text)
    assert len(errors) == 1 and "Traceback" not in text, text[-3000:]
    line = errors[0]
    assert f"PID {holder_pid} on host {socket.gethostname()}" in line, line
    assert command_part in line and "since " in line and " ago" in line, line


def test_two_trainings_of_one_run_one_trains_the_other_is_refused_then_kill_and_resume(tmp_path, spawner, saturated_cpu):
    """With every core kept busy by other processes (issue 29: CI runners share theirs)."""
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    # the same run, told apart by their seeds (recorded in every checkpoint's config.yaml)
    procs = {seed: start(spawner, logs / f"{seed}.log", "train", "--quiet", "--config", RECIPE,
                         "--out", str(run), f"train.seed={seed}", *ARGS) for seed in (1, 2)}
    loser_seed = wait_for(lambda: next((s for s, p in procs.items() if not p.is_alive()), None),
                          procs.values(), "one of the two trainings to be refused")
    winner_seed = 3 - loser_seed
    loser, winner = procs[loser_seed], procs[winner_seed]
    assert loser.exitcode == EXIT_FAIL and winner.is_alive(), (logs / f"{winner_seed}.log").read_text()[-3000:]
    loser_log = (logs / f"{loser_seed}.log").read_text()
    _assert_names_holder(loser_log, winner.pid, f"train.seed={winner_seed}")
    assert "parameters on" not in loser_log  # refused before it built anything

    # while the holder trains: a third writer (--resume) is refused too; readers are not blocked
    wait_for(lambda: len(complete_steps(run)) >= 1, [winner], "the holder's first checkpoint")
    third = start(spawner, logs / "resume.log", "train", "--quiet", "--out", str(run), "--resume")
    assert finish(third) == EXIT_FAIL
    _assert_names_holder((logs / "resume.log").read_text(), winner.pid, f"train.seed={winner_seed}")
    info = start(spawner, logs / "info.log", "info", "--ckpt", str(run))
    sample = start(spawner, logs / "sample.log", "sample", "--ckpt", str(run), "--n", "2",
                   "--out", str(tmp_path / "grid.png"))
    assert finish(info) == 0, (logs / "info.log").read_text()[-3000:]
    assert finish(sample) == 0, (logs / "sample.log").read_text()[-3000:]
    assert (tmp_path / "grid.png").is_file()

    wait_for(lambda: len(complete_steps(run)) >= 2, [winner], "the holder's second checkpoint")
    assert winner.is_alive(), (logs / f"{winner_seed}.log").read_text()[-3000:]
    winner.kill()  # SIGKILL: no chance to release anything itself
    winner.join()

    # the run is the one's: its checkpoints carry its seed, its metrics are one run's history
    steps = complete_steps(run)
    assert steps and all(_seed_of(run / "checkpoints" / f"step-{s:08d}") == winner_seed for s in steps)
    logged = [r["step"] for r in metric_rows(run)]
    assert logged == list(range(1, len(logged) + 1)) and len(logged) >= steps[-1], logged[:50]
    assert (run / LOCK_NAME).is_file()  # the killed holder's lock file stays; its lock died with it

    last = steps[-1]
    resume = start(spawner, logs / "after.log", "train", "--quiet", "--out", str(run), "--resume",
                   f"train.max_steps={last + 3}")
    assert finish(resume) == 0, (logs / "after.log").read_text()[-3000:]
    assert f"resuming from {run / 'checkpoints' / f'step-{last:08d}'} (step {last})" in (logs / "after.log").read_text()
    assert complete_steps(run)[-1] == last + 3
    assert [r["step"] for r in metric_rows(run)] == list(range(1, last + 4))
    assert not (run / LOCK_NAME).exists()  # released (and removed) on a clean exit


def test_lock_file_names_the_holder_and_a_second_lock_is_refused(tmp_path):
    folder = tmp_path / "new" / "folder"
    with WriterLock(folder, "run directory"):
        assert folder.is_dir() and (folder / LOCK_NAME).is_file()
        with pytest.raises(OutputInUseError, match=rf"run directory '{folder}' is being written by another "
                                                    rf"process: PID {os.getpid()} on host "):
            WriterLock(folder, "run directory").acquire()
        with pytest.raises(OutputInUseError, match=f"PID {os.getpid()}"):
            check_not_locked(folder, "run directory")
    # released: the lock file and the folders made for it are gone, and the lock is free again
    assert not (tmp_path / "new").exists()
    check_not_locked(folder, "run directory")
    with WriterLock(folder, "run directory"):
        pass


def test_the_lock_of_a_killed_process_is_free(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import sys, time
        from ecar.lock import WriterLock
        WriterLock({str(folder)!r}, "run directory").acquire()
        print("held", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputInUseError, match=f"PID {holder.pid} on host .* running `python.* -c` since "):
            WriterLock(folder, "run directory").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (folder / LOCK_NAME).is_file()  # left behind by the kill, but nobody holds it
    check_not_locked(folder, "run directory")
    with WriterLock(folder, "run directory"):
        pass


def test_a_lock_inherited_by_a_child_of_a_killed_holder_is_waited_for(tmp_path, monkeypatch):
    """A data-loader worker forked by a training inherits its lock and outlives a SIGKILL of
    it by a few seconds: the next writer waits for the lock instead of refusing at once."""
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""\
        import os, time
        from ecar.lock import WriterLock
        WriterLock({str(folder)!r}, "run directory").acquire()
        if os.fork() == 0:  # the child: holds the inherited lock for 3 s more
            time.sleep(3)
            os._exit(0)
        print("held", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    import ecar.lock

    monkeypatch.setattr(ecar.lock, "_ORPHAN_WAIT", 0.2)  # too short to outwait the child
    with pytest.raises(OutputInUseError, match=f"started by PID {holder.pid} on host .* which has ended; a "
                                               "process it started, such as a data-loader worker, still holds"):
        WriterLock(folder, "run directory").acquire()
    monkeypatch.undo()
    with WriterLock(folder, "run directory"):  # waits until the child has exited
        pass


def test_latent_cache_and_demo_folder_are_refused_while_locked(tmp_path, capsys):
    """cache-latents and demo refuse a folder another process writes (here: this test), at
    once and with nothing written; the cache encodes once the lock is released."""
    cache, demo = tmp_path / "cache", tmp_path / "demo"
    for folder, argv in [
        (cache, ["cache-latents", "--config", RECIPE, "--out", str(cache), "--quiet"]),
        (demo, ["demo", "--out", str(demo), "--minutes", "0.1", "--fid-samples", "0"]),
        (tmp_path / "run", ["train", "--config", RECIPE, "--out", str(tmp_path / "run"), "--quiet", *TINY]),
    ]:
        with WriterLock(folder, "folder"):
            capsys.readouterr()
            assert main(argv) == EXIT_FAIL, argv
            err = capsys.readouterr().err
            assert err.count("error:") == 1 and "Traceback" not in err, err
            assert f"is being written by another process: PID {os.getpid()} on host" in err, err
            assert sorted(p.name for p in folder.iterdir()) == [LOCK_NAME]  # nothing written
    assert main(["cache-latents", "--config", RECIPE, "--out", str(cache), "--quiet"]) == 0
    assert (cache / "manifest.json").is_file() and not (cache / LOCK_NAME).exists()
