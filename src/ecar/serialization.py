"""Small file and state-dict helpers shared by checkpoints, pretrained weights and caches."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch
from torch import nn


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, rename.

    A crash leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def load_refusal(error: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, for a user, without torch's advice.

    torch's message for a file holding objects beyond tensors and plain containers tells the
    reader to retry with ``weights_only=False`` or to allowlist the offending globals; both
    let the file run arbitrary code, and a file we refused is exactly the one not to trust.
    So this keeps only what was refused (e.g. ``Unsupported global: GLOBAL posix.system``)
    and says what to do instead, or the first line of any other failure.
    """
    text = str(error)
    refused = re.search(r"(Unsupported (?:global|operand)[^\n]*?)(?:\.\s|\.$|\n|$)", text)
    if refused or "weights_only" in text or "Weights only load failed" in text:
        what = refused.group(1)[:200] if refused else "objects beyond tensors and plain data"
        return (f"refused: {what}; ecar does not unpickle objects beyond tensors and plain data, "
                "because loading them can run code from the file. It was not written by ecar or it "
                "was altered: use a checkpoint from a source you trust")
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return first[:300]


def state_mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` does not fit ``module`` (missing / unexpected keys, shapes), or None."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: stored {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (first: {shapes[0]})")
    if missing:
        parts.append(f"{len(missing)} missing tensors (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[0]})")
    return "; ".join(parts) or None
