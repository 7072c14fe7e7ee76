"""How the ranks of a run share the objective: DDP (replicated) or FSDP2 (sharded), in one place.

``train.parallel=ddp``: every rank holds the whole model, EMA and optimizer; DDP averages
gradients. Checkpoints are written by rank 0 alone (:func:`ecar.checkpoint.save_checkpoint`).

``train.parallel=fsdp`` with W > 1 ranks: ``fully_shard`` (FSDP2) is applied to every
child of every ``nn.ModuleList`` of the network (its transformer blocks, a head's blocks),
innermost first, and then to the objective as the root, so parameters, gradients and
AdamW's moments are split over the ranks (``Shard(0)`` DTensors on a 1-D mesh). The EMA is
sharded the same way and updated on the local shards (no gather per step). A checkpoint
is still one folder committed by one rename (:mod:`ecar.checkpoint`): rank 0 creates the
hidden folder, every rank writes the optimizer state into ``sharded/`` through
``torch.distributed.checkpoint`` (DCP), rank 0 gathers the full weights and EMA and writes
the usual safetensors files (so ``ecar sample/eval/info/serve/bench`` read an fsdp run
unchanged), then, once all ranks agree that every part is on disk, commits. DCP's
metadata lets any number of processes read the optimizer state back: a run saved on N
ranks resumes on M.

With one process, ``fsdp`` trains the plain (unsharded) objective, exactly as ``ddp`` does
(sharding over one rank is the identity, and no process group is needed), but still saves
and loads the optimizer state through DCP, so its checkpoints resume on any number of ranks.

Mixed precision is ``torch.autocast`` (``train.precision=bf16``) for both modes, with fp32
parameters as the master weights; FSDP2's ``MixedPrecisionPolicy`` is not used, so ddp and
fsdp compute the same numbers (docs/DESIGN.md, Changes 20).
"""

from __future__ import annotations

import copy
import shutil
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from ecar import checkpoint as ckpt
from ecar.config import Config, ConfigError
from ecar.train.distributed import DistInfo, all_reduce_max

DCP = "dcp"
"""``optimizer_format`` of the train state of a checkpoint whose optimizer state is in ``sharded/``."""


def check_parallel(mode: str, di: DistInfo) -> None:
    """Refuse a ``train.parallel`` that this setup cannot run, saying what to do instead."""
    if mode != "fsdp":
        return
    if not dist.is_available():
        raise ConfigError("train.parallel=fsdp needs torch.distributed, which this PyTorch build "
                          "lacks; install a build with it or use train.parallel=ddp")
    if di.world > 1 and di.device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.parallel=fsdp shards over gloo (CPU) or NCCL (CUDA), not "
                          f"'{di.device.type}'; use train.device=cpu or cuda, or train.parallel=ddp")


def _sharded_modules(root: nn.Module) -> list[nn.Module]:
    """The children of every ``nn.ModuleList`` under ``root`` (blocks), innermost first."""
    found = [child for m in root.modules() if isinstance(m, nn.ModuleList) for child in m]
    return found[::-1]  # modules() lists an ancestor before its descendants


@contextmanager
def _single_process_quiet():
    """DCP warns at every single-process save and load; one process is what we asked for."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


class Parallel:
    """The wrapping, gradient sync, gathering and sharded checkpoints of one run's ranks."""

    def __init__(self, mode: str, di: DistInfo, compile_: bool = False):
        check_parallel(mode, di)
        self.mode, self.di, self.compile = mode, di, compile_
        self.sharded = mode == "fsdp" and di.world > 1
        self._ddp: DDP | None = None
        self._root: nn.Module | None = None
        self._plain_ema: nn.Module | None = None
        self._mesh: DeviceMesh | None = None

    # ------------------------------------------------------------------ wrapping

    def prepare(self, model: nn.Module) -> None:
        """Make every rank's freshly built ``model`` equal to rank 0's (DDP does it by itself)."""
        if self.sharded:
            with torch.no_grad():
                for t in model.state_dict().values():
                    dist.broadcast(t, 0)

    def wrap(self, objective: nn.Module, ema: nn.Module) -> nn.Module:
        """The module to call for the losses: ``objective`` wrapped (DDP / FSDP2, compile);
        with fsdp the EMA is sharded alike. Call before building the optimizer."""
        if self.sharded:
            self._mesh = init_device_mesh(self.di.device.type, (self.di.world,))
            if self.di.is_main:  # an unsharded copy to gather the EMA into for sample previews
                self._plain_ema = copy.deepcopy(ema).to("cpu")
            for root in (objective, ema):
                for block in _sharded_modules(root):
                    fully_shard(block, mesh=self._mesh)
                fully_shard(root, mesh=self._mesh)
            self._root = wrapped = objective
        elif self.di.world > 1:
            dev = self.di.device
            self._ddp = wrapped = DDP(objective, device_ids=[dev.index] if dev.type == "cuda" else None)
        else:
            wrapped = objective
        return cast(nn.Module, torch.compile(wrapped)) if self.compile else wrapped

    def no_sync(self, sync: bool):
        """Context for one micro-step's forward and backward: gradients are reduced over the
        ranks only when ``sync`` (the last micro-step of an accumulation)."""
        if sync or self.di.world == 1:
            return nullcontext()
        if self._ddp is not None:
            return self._ddp.no_sync()
        return self._fsdp_no_sync()

    @contextmanager
    def _fsdp_no_sync(self):
        self._root.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self._root.set_requires_gradient_sync(True)

    @staticmethod
    def scalar(x: torch.Tensor) -> float:
        """A float from a reduction result that may be a DTensor (a sharded gradient norm)."""
        return float(x.full_tensor() if hasattr(x, "full_tensor") else x)

    # ------------------------------------------------------------------ whole weights

    def full_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """``module``'s full state dict, on CPU with fsdp (collective: every rank calls it;
        rank 0 gets the tensors, the others an empty dict)."""
        if not self.sharded:
            return module.state_dict()
        full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return cast("dict[str, torch.Tensor]", full)

    def load_full_state(self, module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
        """Load a full (unsharded) state dict into ``module``; each rank keeps its shards."""
        if not self.sharded:
            ckpt.load_state_into(module, state, what)
            return
        ckpt.check_state_fits(module, state, what)
        set_model_state_dict(module, cast(Any, state), options=StateDictOptions(full_state_dict=True))

    @contextmanager
    def sampling_ema(self, ema: nn.Module):
        """A module with the EMA weights to sample from on rank 0 (collective with fsdp: every
        rank enters; the others get None). With fsdp it is an unsharded copy kept on the CPU
        and moved to the device only while in use."""
        if not self.sharded:
            yield ema
            return
        state = self.full_state(ema)
        if not self.di.is_main:
            yield None
            return
        plain = self._plain_ema
        assert plain is not None  # made by wrap() on rank 0
        plain.load_state_dict(state)
        try:
            yield plain.to(self.di.device)
        finally:
            plain.to("cpu")

    # ------------------------------------------------------------------ checkpoints

    def _on_main(self, fn) -> Exception | None:
        """Run ``fn`` on rank 0; the exception it raised, if any (for :meth:`_agree`)."""
        if self.di.is_main:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - re-raised by _agree on this rank
                return e
        return None

    def _agree(self, failure: Exception | None, what: str) -> None:
        """Collective: every rank raises if any rank failed (so none waits for a dead partner);
        the failing rank raises its own error. Also a barrier."""
        failed = failure is not None
        if self.sharded:
            failed = all_reduce_max(torch.tensor(float(failed), device=self.di.device)).item() > 0
        if failure is not None:
            raise failure
        if failed:
            raise ckpt.CheckpointError(f"rank 0 could not {what}; its error is in its log")

    def save(self, out: Path, *, model: nn.Module, ema: nn.Module, opt: torch.optim.Optimizer,
             cfg: Config, step: int, state: dict[str, Any]) -> None:
        """Save one checkpoint (every rank calls it; see the module docstring for who writes what)."""
        if self.mode != "fsdp":
            if self.di.is_main:
                ckpt.save_checkpoint(out, model=model, ema=ema, cfg=cfg, step=step,
                                     train_state={**state, "optimizer": opt.state_dict()})
            return
        box: list = [None]

        def begin() -> None:
            box[0] = str(ckpt.begin_save(out, step))

        self._agree(self._on_main(begin), f"start the save of step {step}")
        if self.sharded:
            dist.broadcast_object_list(box, 0)
        tmp = Path(box[0])
        try:
            with _single_process_quiet():  # DCP raises a failure of any rank on every rank
                dcp.save({"optimizer": get_optimizer_state_dict(model, opt)},
                         checkpoint_id=tmp / ckpt.SHARDED_DIR, no_dist=not self.sharded)
            ckpt.pause_for_tests()
            model_state, ema_state = self.full_state(model), self.full_state(ema)
            files = {**state, "optimizer_format": DCP}
            # after this, every rank's shards (DCP fsyncs its files) and rank 0's files are on disk
            self._agree(self._on_main(lambda: ckpt.write_checkpoint_files(
                tmp, model_state, ema_state, cfg, step, files)), f"write the checkpoint of step {step}")
        except BaseException:
            if self.di.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._agree(self._on_main(lambda: ckpt.commit_save(out, tmp, step, cfg.train.keep_last)),
                    f"commit the checkpoint of step {step}")

    def restore(self, ck: ckpt.Checkpoint, model: nn.Module, ema: nn.Module,
                opt: torch.optim.Optimizer) -> None:
        """Load a checkpoint's weights, EMA and optimizer state (every rank calls it)."""
        state, where = ck.train_state, f"checkpoint '{ck.directory}'"
        assert state is not None, "a checkpoint read for resuming carries its train state"
        written = "fsdp" if state.get("optimizer_format") == DCP else "ddp"
        if written != self.mode:
            raise ckpt.CheckpointError(
                f"cannot resume {where} with train.parallel={self.mode}: it was written by a "
                f"train.parallel={written} run; resume with train.parallel={written}"
            )
        self.load_full_state(model, ck.model_state, f"{where} (model)")
        self.load_full_state(ema, ck.ema_state or ck.model_state, f"{where} (ema)")
        if self.mode != "fsdp":
            opt.load_state_dict(state["optimizer"])  # the LR is set from this run's config every step
            return
        osd = get_optimizer_state_dict(model, opt)  # the layout to read into (creates empty moments)
        with _single_process_quiet():
            dcp.load({"optimizer": osd}, checkpoint_id=ck.directory / ckpt.SHARDED_DIR, no_dist=not self.sharded)
        set_optimizer_state_dict(model, opt, osd)
