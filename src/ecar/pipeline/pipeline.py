"""The pipeline: a trained network with its config and autoencoder, and the one way to
generate images from it (:func:`load`, :class:`Pipeline`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import ecar.flops  # noqa: F401  (registers the attention FLOP formulas torch lacks)
from ecar.autoencoders import Autoencoder, build_autoencoder
from ecar.build import build_model, latent_spec
from ecar.checkpoint import CheckpointError, load_checkpoint, load_state_into
from ecar.config import Config, ConfigError
from ecar.device import pick_device
from ecar.engine.speculative_cost import GammaMemory
from ecar.methods import Method, apply_sample_overrides, drafted_methods, method_of, total_steps
from ecar.pipeline.batches import UnitHook, check_generation_fits, labels_for, sample_batches
from ecar.pipeline.output import Output
from ecar.samplers import SampleConfig

__all__ = ["Pipeline", "check_draft_pair", "load"]


def load(path: str | Path, device: str | torch.device | None = None, ema: bool = True) -> Pipeline:
    """The :class:`Pipeline` of a trained run.

    Args:
        path: a run directory (its newest complete checkpoint is loaded, and any it skips is
            logged) or one checkpoint's folder (``RUN/checkpoints/step-…``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, a ``torch.device``, or None
            (``"auto"``: the first available of CUDA, MPS, CPU).
        ema: the EMA weights (default) or the raw ones; only the weights used are read, so a
            damaged EMA file does not refuse the intact raw weights.

    Raises:
        ecar.checkpoint.CheckpointError: no loadable checkpoint at ``path``, or its config does
            not build a model.
        ecar.errors.ConfigError: a device that is not available.
    """
    dev = device if isinstance(device, torch.device) else pick_device("auto" if device is None else device)
    ck = load_checkpoint(path, with_ema=ema, with_model=not ema)
    cfg = ck.cfg
    try:
        ae = build_autoencoder(cfg.autoencoder, cfg.data.channels or 3)
        model, _ = build_model(cfg, latent_spec(cfg, ae))
    except (ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: its config does not build a model: {e}") from None
    state = ck.ema_state if (ema and ck.ema_state is not None) else ck.model_state
    load_state_into(model, state, f"checkpoint '{path}'")
    model.to(dev).eval()
    ae.to(dev).eval()
    return Pipeline(model, cfg, ae, step=ck.step, directory=ck.directory)


def check_draft_pair(target: Config, draft: Config) -> None:
    """Raise :class:`ConfigError` unless a model of config ``draft`` can propose tokens for one
    of ``target`` (speculative decoding): a method that can be drafted, the same method, data
    and autoencoder (so the same latents), and what the method's drafting asks of the pair
    (:meth:`~ecar.methods.Drafting.check_pair`: the token layout)."""
    method = method_of(target.model)
    if method.drafting is None:
        can = ", ".join(drafted_methods()) or "none"
        raise ConfigError(f"method {method.name} cannot be drafted (speculative decoding needs a method that "
                          f"declares how; those that can: {can}; docs/speculative.md)")
    pairs = {"method": (method.name, method_of(draft.model).name),
             "data.name": (target.data.name, draft.data.name),
             "data.resolution": (target.data.resolution, draft.data.resolution),
             "data.channels": (target.data.channels, draft.data.channels),
             "data.num_classes": (target.data.num_classes, draft.data.num_classes),
             "autoencoder": (dataclasses.asdict(target.autoencoder), dataclasses.asdict(draft.autoencoder))}
    diff = [f"{k}: target {a!r}, draft {b!r}" for k, (a, b) in pairs.items() if a != b]
    if diff:
        raise ConfigError("the draft checkpoint cannot propose tokens for the target: they differ in "
                          + "; ".join(diff) + ". Use a draft trained on the same data with the same "
                          "method, autoencoder and token layout")
    method.drafting.check_pair(target.model, draft.model)


class Pipeline:
    """A trained network, its config and autoencoder: call it to generate images.

    Make one with :func:`ecar.load` (from a run directory), or from parts in memory
    (``Pipeline(model, cfg, autoencoder)``: the trainer's previews). The same seed, settings
    and batch size give the same images on the same device.

    Attributes:
        model: the network (in eval mode), on :attr:`device`.
        cfg: its resolved config (``cfg.sample``: the sampling settings the recipe ships).
        autoencoder: latents -> images.
        method: its generation method (:class:`ecar.methods.Method`).
        step: the training step of the checkpoint (None for a pipeline built in memory).
        directory: the checkpoint folder that was loaded (None in memory).
        draft: the draft pipeline of speculative decoding (:meth:`with_draft`), or None.
    """

    def __init__(self, model: nn.Module, cfg: Config, autoencoder: Autoencoder, *, step: int | None = None,
                 directory: Path | None = None, draft: Pipeline | None = None):
        self.model, self.cfg, self.autoencoder = model, cfg, autoencoder
        self.method: Method[Any, Any] = method_of(cfg.model)
        self.step, self.directory, self.draft = step, directory, draft
        self._gflops: dict[tuple[str, int], float] = {}
        # what gamma="auto" learned in earlier calls (costs per batch size, pooled acceptance per
        # setting): only the first call at a batch size pays for its pilot
        self._gamma_memory = GammaMemory() if draft is not None else None

    def __repr__(self) -> str:
        where = f" from {self.directory}" if self.directory else ""
        draft = f", drafted by {self.draft.cfg.model.name}" if self.draft else ""
        return f"<Pipeline {self.name} (method {self.method.name}, step {self.step}){where}{draft}>"

    # ------------------------------------------------------------------ what it is

    @property
    def name(self) -> str:
        """The model's registry name (``model.name`` of its recipe)."""
        return str(self.cfg.model.name)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_classes(self) -> int:
        k = self.cfg.data.num_classes
        if k is None:
            raise ConfigError("data.num_classes is not resolved in this pipeline's config")
        return int(k)

    @property
    def params(self) -> int:
        """Parameters of the network."""
        return sum(p.numel() for p in self.model.parameters())

    @property
    def sample(self) -> SampleConfig:
        """The sampling settings the recipe ships (what a call uses unless told otherwise)."""
        return self.cfg.sample

    @property
    def units(self) -> int:
        """Units a generation reports one result each for at the shipped settings (stages of
        E-CAR, tokens of AR, ...; 1 for DiT): the entries of :meth:`stages`' output."""
        counts = self.step_counts()
        return len(counts) if isinstance(counts, list) else 1

    def settings(self, sample: SampleConfig | None = None, **overrides: Any) -> SampleConfig:
        """Validated sampling settings: ``sample`` (default: the shipped ones) with ``overrides``
        (``steps=8``, ``cfg=3.0``, ``stage_steps=[4, 3, 2]``; None values are ignored), checked
        with the messages of the CLI flags. Raises :class:`ecar.errors.ConfigError`."""
        return apply_sample_overrides(sample or self.cfg.sample, overrides)

    def step_counts(self, sample: SampleConfig | None = None) -> int | list[int]:
        """Integration steps per unit at ``sample`` (an int for one unit, else one per unit)."""
        return self.method.step_counts(self.model, sample or self.cfg.sample)

    def total_steps(self, sample: SampleConfig | None = None) -> int:
        """Integration steps per image at ``sample`` (summed over units)."""
        return total_steps(self.step_counts(sample))

    def scale_steps(self, sample: SampleConfig, factor: float) -> SampleConfig:
        """``sample`` with every step count × ``factor``, keeping the allocation across units
        (:meth:`ecar.methods.Method.scale_steps`)."""
        return self.method.scale_steps(self.model, sample, factor)

    def page_fields(self, sample: SampleConfig | None = None) -> dict[str, Any]:
        """``{name: value}`` of the sampling settings that apply to this model (and its draft),
        as ``ecar serve``'s page offers them (:meth:`ecar.methods.Method.page_fields`)."""
        return self.method.page_fields(self.model, sample or self.cfg.sample, drafted=self.draft is not None)

    def head(self) -> nn.Module | None:
        """The network's per-token head (cost anatomies report it apart), or None."""
        return self.method.head(self.model)

    def labels(self, n: int, classes: list[int] | None = None) -> torch.Tensor:
        """``n`` labels cycling through ``classes`` (default: every class). Raises ValueError
        for a class out of range."""
        return labels_for(n, self.num_classes, classes)

    def with_settings(self, sample: SampleConfig) -> Pipeline:
        """The same network with ``sample`` as its shipped settings (a recipe's changed sampler)."""
        cfg = dataclasses.replace(self.cfg, sample=dataclasses.replace(sample))
        out = Pipeline(self.model, cfg, self.autoencoder, step=self.step, directory=self.directory, draft=self.draft)
        out._gamma_memory = self._gamma_memory  # kept per setting: the same pair learns on
        return out

    def with_draft(self, draft: Pipeline) -> Pipeline:
        """This pipeline sampling by exact speculative decoding with ``draft`` proposing tokens
        (docs/speculative.md): the samples are this model's, only faster where the draft is
        good. Raises :class:`ecar.errors.ConfigError` unless this method can be drafted
        (:attr:`ecar.methods.Method.drafting`) and ``draft`` is of the same method, data,
        autoencoder and token layout."""
        check_draft_pair(self.cfg, draft.cfg)
        return Pipeline(self.model, self.cfg, self.autoencoder, step=self.step, directory=self.directory, draft=draft)

    # ------------------------------------------------------------------ generation

    def __call__(self, n: int = 16, classes: list[int] | None = None, seed: int = 0, *,
                 labels: torch.Tensor | None = None, sample: SampleConfig | None = None, batch_size: int = 256,
                 progress: bool = False, on_unit: UnitHook | None = None, **settings: Any) -> Output:
        """Generate images.

        Args:
            n: number of images (ignored when ``labels`` is given).
            classes: class ids to cycle through (default: every class).
            seed: the seed of the call's one random generator.
            labels: (N,) long, one class per image, instead of ``n`` and ``classes``.
            sample: sampling settings to start from (default: the shipped ones).
            batch_size: images per call of the method's loop (changes the exact images).
            progress: a progress bar over batches.
            on_unit: ``on_unit(i, images)`` receives unit i's decoded images (N_b, C, H_i, W_i)
                as soon as they exist (``ecar serve`` streams them).
            **settings: sampling settings of the model's method (``steps=8``, ``cfg=2.5``,
                ``stage_steps=[4, 3, 2]``, ``sampler="heun"``, ``gamma=4``, ...), validated
                like the ``ecar sample`` flags.

        Returns:
            :class:`Output`: ``.images`` (PIL), ``.tensor``, ``.seconds_per_image``,
            ``.gflops_per_image`` and, with a draft, ``.speculative``.
        """
        return self._generate(n, classes, seed, labels, sample, batch_size, progress, on_unit, False, settings)

    def stages(self, n: int = 16, classes: list[int] | None = None, seed: int = 0, *,
               labels: torch.Tensor | None = None, sample: SampleConfig | None = None, batch_size: int = 256,
               progress: bool = False, **settings: Any) -> Output:
        """As calling the pipeline, and ``.stages``: per unit (E-CAR's and FlowAR's stages, a
        MAR iteration, an xAR unit, an AR token; one for DiT) the decoded images after it,
        coarse to fine. The images are those of the same call without stages."""
        return self._generate(n, classes, seed, labels, sample, batch_size, progress, None, True, settings)

    def _generate(self, n: int, classes: list[int] | None, seed: int, labels: torch.Tensor | None,
                  sample: SampleConfig | None, batch_size: int, progress: bool, on_unit: UnitHook | None,
                  stages: bool, settings: dict[str, Any]) -> Output:
        sample = self.settings(sample, **settings)
        if labels is None:
            if n < 1:
                raise ConfigError(f"n must be >= 1, got {n}")
            labels = self.labels(n, classes)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        check_generation_fits(self.cfg, len(labels), stages, where="n")
        if self.draft is not None and (stages or on_unit is not None):
            raise ConfigError("speculative decoding (a draft) yields no per-unit results: drop the stages output")
        out = sample_batches(self.model, self.method, self.autoencoder, labels, sample, seed, batch_size,
                             progress=progress, return_stages=stages, on_unit=on_unit,
                             draft=None if self.draft is None else self.draft.model, memory=self._gamma_memory)
        seconds = out.seconds if out.speculative is None else float(out.speculative["seconds"])
        count: Callable[[], float | None] = (lambda: None) if self.draft is not None else (lambda: self.gflops(sample))
        return Output(out.images, labels.cpu(), seed, sample, seconds, out.stages, out.speculative, count)

    # ------------------------------------------------------------------ cost

    def latent_call(self, sample: SampleConfig | None = None, batch: int = 1,
                    on_unit: Callable[[int, torch.Tensor], None] | None = None) -> Callable[[int], dict]:
        """``run(seed)``: one call of the method's loop on ``batch`` labels cycling over the
        classes, in latent space (no decoding), with a generator seeded by ``seed``; what cost
        measurements count and time (:mod:`ecar.eval.cost`). ``on_unit(i, latents)`` hears each
        unit's latents."""
        if batch < 1:
            raise ValueError(f"cost batch must be >= 1, got {batch}")
        sample = sample or self.cfg.sample
        device = self.device
        labels = labels_for(batch, self.num_classes).to(device)
        model, method = self.model, self.method

        def run(seed: int) -> dict:
            with torch.no_grad():
                return method.generate(model, sample, labels, torch.Generator(device=device).manual_seed(seed),
                                       on_unit=on_unit)

        return run

    def gflops(self, sample: SampleConfig | None = None, batch: int = 1) -> float:
        """GFLOPs per image of one sampling call of ``batch`` images at ``sample`` (default: the
        shipped settings), in latent space with guidance and attention (torch's
        ``FlopCounterMode``; elementwise work is not counted), remembered per setting."""
        sample = sample or self.cfg.sample
        key = (repr(sample), batch)
        if key not in self._gflops:
            run = self.latent_call(sample, batch)
            was_training = self.model.training
            self.model.eval()
            try:
                with FlopCounterMode(display=False) as counter:
                    run(0)
            finally:
                self.model.train(was_training)
            self._gflops[key] = counter.get_total_flops() / batch / 1e9
        return self._gflops[key]
