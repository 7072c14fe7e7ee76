"""Checkpoints and run directories: :mod:`~ecar.checkpoint.layout` (names, markers, which
directories are runs), :mod:`~ecar.checkpoint.save` (writing one as a unit),
:mod:`~ecar.checkpoint.load` (reading the newest complete one).

A run directory (what ``ecar train --out`` names) holds::

    RUN/ecar-run.json                  marker: this directory is an ecar run (written first)
    RUN/checkpoints/step-00000120/     one complete checkpoint per folder:
        model.safetensors                weights, step and family in the metadata
        ema.safetensors                  EMA weights, same metadata
        config.yaml                      the resolved config
        train_state.pt                   optimizer, RNG, data position (weights_only=True)
    RUN/checkpoints/step-00000123/     the newest one is the current one
    RUN/metrics.jsonl, RUN/samples/    written by the trainer

**A checkpoint is one unit** (crash consistency). Its four files are written, each
fsynced, into a hidden folder ``checkpoints/.step-….tmp-…``; the folder is fsynced and
renamed to ``step-NNNNNNNN`` (one atomic step, made durable by an fsync of
``checkpoints/``); only then are older checkpoints beyond ``train.keep_last`` removed. A
kill at any moment leaves the previous checkpoints intact and at most a hidden unfinished
folder, which readers skip (and say so) and the next save deletes. Four files each
written atomically but side by side, as before, could be left torn between two steps.

A ``train.parallel=fsdp`` run saves the same four files (rank 0 gathers the full weights
and EMA) plus ``sharded/``, the optimizer state written by every rank through
``torch.distributed.checkpoint`` into the same hidden folder before rank 0 commits it
(:mod:`ecar.train.parallel`); its ``train_state.pt`` then holds no optimizer.

Readers (:func:`load_checkpoint`, :func:`find_checkpoint`) accept the run directory, its
``checkpoints/`` folder or one ``step-…`` folder, and take the newest checkpoint that
loads, logging every one they skip. The old layout, the four files directly in the run
directory, still loads (as the oldest checkpoint of its run), and the weights' metadata
still lets loading check that the files of a checkpoint belong to the same step.
"""

from ecar.checkpoint.layout import (
    CHECKPOINT_FILES,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    EMA_FILE,
    META_KEY,
    MODEL_FILE,
    RUN_MARKER,
    SAVE_PAUSE_ENV,
    SHARDED_DIR,
    STATE_FILE,
    CheckpointError,
    has_checkpoint,
    is_run,
    mark_run,
    pause_for_tests,
    run_entries,
    step_dir_name,
)
from ecar.checkpoint.load import (
    Checkpoint,
    check_state_fits,
    find_checkpoint,
    load_checkpoint,
    load_state_into,
    load_train_state,
    read_config,
)
from ecar.checkpoint.save import begin_save, commit_save, prune_checkpoints, save_checkpoint, write_checkpoint_files

__all__ = [
    "CHECKPOINTS_DIR", "CHECKPOINT_FILES", "CONFIG_FILE", "Checkpoint", "CheckpointError", "EMA_FILE", "META_KEY",
    "MODEL_FILE", "RUN_MARKER", "SAVE_PAUSE_ENV", "SHARDED_DIR", "STATE_FILE", "begin_save", "check_state_fits",
    "commit_save", "find_checkpoint", "has_checkpoint", "is_run", "load_checkpoint", "load_state_into",
    "load_train_state", "mark_run", "pause_for_tests", "prune_checkpoints", "read_config", "run_entries",
    "save_checkpoint", "step_dir_name", "write_checkpoint_files",
]
