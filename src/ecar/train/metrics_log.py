"""A run's training history: ``metrics.jsonl`` (always) and TensorBoard (when installed and
enabled), written by rank 0, one history per run across resumes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ecar.serialization import atomic_write

__all__ = ["MetricsLog"]

log = logging.getLogger("ecar.train")


class MetricsLog:
    """metrics.jsonl (always) and TensorBoard (when installed and enabled), rank 0 only.

    One history per run: a run resumed from the checkpoint of step N first drops what the
    interrupted process logged after N (rows of ``metrics.jsonl`` with a later step, and a
    line torn by a kill, rewritten atomically: temporary file, fsync, rename), and opens
    TensorBoard's writer with ``purge_step=N + 1``, which hides the earlier events of steps
    after N (TensorBoard purges steps >= purge_step; step N itself was logged before its
    checkpoint and is not logged again). Each step then appears once in both.
    """

    def __init__(self, out: Path, enabled: bool, tensorboard: bool, resume_step: int | None = None):
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        self.path = out / "metrics.jsonl"
        if resume_step is not None:
            self._drop_after(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resume_step is None else resume_step + 1
                self.tb = SummaryWriter(str(out / "tb"), purge_step=purge)
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.tb = None

    def _drop_after(self, step: int) -> None:
        """Rewrite metrics.jsonl without the rows logged after ``step`` (and a torn last line)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline, as every whole row does
        try:
            json.loads(torn)
            lines.append(torn)  # a whole row that lost only its newline
            torn = b""
        except ValueError:
            pass
        kept, dropped = [], 0
        for line in lines:
            try:
                row_step = json.loads(line).get("step")
            except (ValueError, AttributeError):
                row_step = None
            if isinstance(row_step, int) and row_step > step:
                dropped += 1
            else:
                kept.append(line)
        if not dropped and not torn:
            return
        atomic_write(self.path, b"".join(line + b"\n" for line in kept))
        log.info("%s: dropped %d row(s) logged after step %d%s by the interrupted run", self.path,
                 dropped, step, " and a torn last line" if torn else "")

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(f"train/{k}", v, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
