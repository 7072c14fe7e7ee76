"""What ``ecar serve`` does per model, without the web framework: load, validate, generate.

A :class:`ModelSlot` holds one loaded checkpoint and a lock, so one generation at a time
runs per model (requests queue on the lock in arrival order; different models run side by
side). :meth:`ModelSlot.parse` turns a request body into a :class:`GenerationRequest` or
raises :class:`RequestError` with a message for the page (the app answers it with a 4xx):
the server shares two CPU cores with whoever runs it, so sizes are capped (:data:`LIMITS`).
:meth:`ModelSlot.run` generates and reports events through a callback, one per unit as soon
as it exists (the engine's ``on_unit`` hook), then the grid and the cost. Keeping this part
free of Starlette lets the tests drive it directly and keeps the import of the web framework
in one module (:mod:`ecar.serve.app`).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
from PIL import Image

from ecar.errors import ConfigError, shown
from ecar.imageio import auto_scale, make_grid, to_uint8
from ecar.layers import upsample
from ecar.methods import apply_sample_overrides, sampler_flags, total_steps
from ecar.pipeline import Pipeline, load
from ecar.samplers import SampleConfig, stop_when
from ecar.schema import parser_kind, setting_label

__all__ = ["DISPLAY_PX", "GenerationCancelled", "GenerationRequest", "LIMITS", "ModelSlot", "RequestError",
           "ServeError", "load_slots", "png_data_url", "read_json"]

LIMITS: dict[str, Any] = {"max_images": 64, "max_steps": 1000, "max_guidance": 20.0, "max_seed": 2**31 - 1,
          "max_body_bytes": 64 * 1024, "max_json_depth": 16, "max_number_chars": 40}
"""Request limits: images per request, integration steps per image (summed over units),
guidance scale (0 .. max) and seed (0 .. max) — a CPU takes seconds per image at the top —
and the bounds a request body meets before it is parsed (:func:`read_json`): its size in
bytes, how deep its arrays and objects nest, and the characters of one number (a request
needs about 200 bytes, depth 3 and 10 digits)."""

DISPLAY_PX = 64
"""Each image is enlarged (nearest, integer factor) to about this many pixels on the page."""

REQUEST_KEYS = ("model", "class", "n", "seed", "settings")


class ServeError(ValueError):
    """``ecar serve`` cannot start (web extra missing, no checkpoint, port taken): what to do."""


class Flag(Protocol):
    """What a generation checks to stop: a :class:`threading.Event`, or any object with ``is_set``."""

    def is_set(self) -> bool: ...


class RequestError(ValueError):
    """A request the server will not run; the message is shown on the page as is, and the
    app answers it with HTTP ``status`` (400, or 413 for a body over the size limit)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class GenerationCancelled(RuntimeError):
    """Raised inside a generation whose request was cancelled (client gone, server stopping),
    at the first integration step or unit boundary after the cancellation. ``unit`` and
    ``step`` say where: the unit that was running (0-based) and the steps of it that had
    started; ``where`` is that as text for a message."""

    def __init__(self, message: str, unit: int = 0, units: int = 1, step: int = 0):
        super().__init__(message)
        self.unit, self.units, self.step = unit, units, step

    @property
    def where(self) -> str:
        return f" at unit {self.unit + 1} of {self.units}, after {self.step} step(s) of it"


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request: one label per image, the sampling settings and the seed."""

    labels: torch.Tensor
    sample: SampleConfig
    seed: int
    klass: int | None
    step_counts: int | list[int]

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def units(self) -> int:
        """Units the method reports one result each for (:meth:`Method.step_counts` entries)."""
        return len(self.step_counts) if isinstance(self.step_counts, list) else 1


def png_data_url(array: np.ndarray) -> str:
    """(H, W, C) uint8 -> ``data:image/png;base64,...`` (C = 1 as greyscale), for an <img>."""
    buf = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- the request body

_JSON_SPECIAL = re.compile(r'[\[\]{}"\\]')


def _check_depth(text: str, limit: int) -> None:
    """Raise :class:`RequestError` when the JSON ``text`` nests arrays / objects deeper than
    ``limit``, before any parser recurses into it (Python's ``json`` would end 50,000 levels
    in a ``RecursionError``). One linear pass over the brackets, quotes and backslashes,
    skipping those inside strings."""
    depth, in_string, escaped_at = 0, False, -1
    for m in _JSON_SPECIAL.finditer(text):
        i, c = m.start(), m.group()
        if i == escaped_at:
            continue
        if in_string:
            if c == "\\":
                escaped_at = i + 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > limit:
                raise RequestError(f"the request body nests arrays or objects more than {limit} levels deep "
                                   f"(at character {i + 1}); a request needs 3")
        elif c in "]}":
            depth -= 1


def _number(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def literal(text: str) -> Any:
        if len(text) > LIMITS["max_number_chars"]:
            raise RequestError(f"the request body holds a number of {len(text):,} characters "
                               f"({shown(text)}); at most {LIMITS['max_number_chars']} are read")
        value = parse(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise RequestError(f"the request body holds {shown(text)}, beyond the finite numbers")
        return value

    return literal


def _constant(text: str) -> Any:
    raise RequestError(f"the request body holds {text}, which is not a JSON number (numbers must be finite)")


def read_json(raw: bytes) -> Any:
    """A request body -> its JSON value, bounded before it is parsed (:data:`LIMITS`: size,
    nesting depth, characters of a number; NaN and ±Infinity refused). Every failure is a
    :class:`RequestError` with a one-line reason (status 413 for the size)."""
    limit = LIMITS["max_body_bytes"]
    if len(raw) > limit:
        raise RequestError(f"the request body is larger than {limit:,} bytes", status=413)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(f"the request body is not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        return None
    _check_depth(text, LIMITS["max_json_depth"])
    try:
        return json.loads(text, parse_int=_number(int), parse_float=_number(float), parse_constant=_constant)
    except json.JSONDecodeError as e:
        raise RequestError(f"the request body is not valid JSON: {e.msg} (line {e.lineno}, "
                           f"column {e.colno})") from None


# --------------------------------------------------------------------------- the request's fields


def _name(key: Any) -> str:
    """A client's field name as a message shows it: short printable text as is, else bounded."""
    return key if isinstance(key, str) and len(key) <= 40 and key.isprintable() else shown(key)


def _as_int(value: Any) -> int | None:
    """An integer field of a request (a JSON integer, a whole float, or decimal digits as the
    page's form sends them), or None when it is not one. A string of more than 20 characters
    is not read: no seed or count needs it, and Python refuses ``int()`` of 4,300 digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and len(value) <= 20 and _INT_TEXT.fullmatch(value):
        return int(value)
    return None


_INT_TEXT = re.compile(r"\s*-?\d+\s*")


def _int(body: dict, key: str, default: int | None, lo: int, hi: int, what: str) -> int | None:
    value = body.get(key, default)
    if value is None and default is None:
        return None
    number = _as_int(value)
    if number is None or not lo <= number <= hi:
        raise RequestError(f"{what} must be an integer from {lo} to {hi}, got {shown(value)}")
    return number


def _setting_values(settings: Any) -> dict:
    """The page's settings (strings as typed, or JSON values) -> values of the settings'
    types, parsed exactly as the ``ecar sample`` flags parse them; empty means "as shipped"."""
    if settings is None:
        return {}
    if not isinstance(settings, dict):
        raise RequestError(f"settings must be an object of sampling settings, got {shown(settings)}")
    parsers = {f.dest: f.type for f in sampler_flags()}
    out = {}
    for key, value in settings.items():
        if isinstance(value, str):
            if not value.strip():
                continue
            parse = parsers.get(key)
            if parse is not None:
                try:
                    value = parse(value.strip())
                except ValueError:
                    raise RequestError(f"setting {_name(key)}: expected {parser_kind(parse)}, "
                                       f"got {shown(value)}") from None
        out[key] = value
    return out


def _check_finite(sample: SampleConfig) -> None:
    """Every number of the settings finite (JSON and the float parser both let NaN and ∞ in)."""
    for f in dataclasses.fields(sample):
        value = getattr(sample, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise RequestError(f"setting {f.name} must be a finite number, got {v}")


class ModelSlot:
    """One loaded checkpoint's pipeline behind a lock: validation, generation, and the FLOP
    count per settings (counted once by the pipeline, :meth:`ecar.pipeline.Pipeline.gflops`,
    then remembered)."""

    def __init__(self, key: str, ckpt: str, pipe: Pipeline):
        self.key, self.ckpt, self.pipe = key, ckpt, pipe
        self.lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._queued = 0

    # ------------------------------------------------------------------ description

    def describe(self) -> dict:
        """What the page needs to draw this model's column: names, classes and the sampling
        settings that apply to its method (:meth:`ecar.pipeline.Pipeline.page_fields`), each
        with a label in words, its help text (the CLI flag's) and its choices. No local path:
        the page may be seen by others than the one who started the server."""
        pipe = self.pipe
        flags = {f.dest: f for f in sampler_flags()}
        fields = {f.name: f for f in dataclasses.fields(pipe.sample)}
        settings = []
        for name, value in pipe.page_fields().items():
            text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else (
                "" if value is None else str(value))
            flag = flags.get(name)
            settings.append({"name": name, "label": setting_label(type(pipe.sample), name), "value": text,
                             "help": fields[name].metadata.get("help", ""),
                             "choices": list(flag.choices) if flag and flag.choices else None})
        draft = pipe.draft
        return {
            "id": self.key, "name": pipe.name, "method": pipe.method.name,
            "draft": None if draft is None else draft.name,
            "step": pipe.step, "num_classes": pipe.num_classes, "resolution": pipe.cfg.data.resolution,
            "channels": pipe.cfg.data.channels, "units": 0 if draft is not None else pipe.units,
            "settings": settings,
        }

    # ------------------------------------------------------------------ validation

    def parse(self, body: Any) -> GenerationRequest:
        """Validate a request body (see :data:`REQUEST_KEYS`) -> :class:`GenerationRequest`.

        Raises :class:`RequestError` with a message meant for the page.
        """
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        unknown = [k for k in body if k not in REQUEST_KEYS]
        if unknown:
            raise RequestError(f"unknown field(s) {', '.join(map(_name, unknown[:5]))}"
                               f"{' …' if len(unknown) > 5 else ''}; valid: {', '.join(REQUEST_KEYS)}")
        k = self.pipe.num_classes
        klass = body.get("class")
        if klass == "" or klass == "all":
            klass = None
        if klass is not None:
            number = _as_int(klass)
            if number is None or not 0 <= number < k:
                raise RequestError(f"class {shown(klass)} is out of range: this model has classes 0 to {k - 1}")
            klass = number
        n = _int(body, "n", 8, 1, LIMITS["max_images"], "n (the number of images)")
        seed = _int(body, "seed", 0, 0, LIMITS["max_seed"], "seed")
        assert n is not None and seed is not None  # both have a default
        try:
            sample = apply_sample_overrides(self.pipe.sample, _setting_values(body.get("settings")))
        except ConfigError as e:
            raise RequestError(str(e)) from None
        _check_finite(sample)
        if not 0 <= sample.cfg <= LIMITS["max_guidance"]:
            raise RequestError(f"guidance (cfg) must be from 0 to {LIMITS['max_guidance']:g}, got {sample.cfg:g}")
        try:
            counts = self.pipe.step_counts(sample)
        except ValueError as e:
            raise RequestError(str(e)) from None
        if min(counts if isinstance(counts, list) else [counts]) < 1:
            raise RequestError(f"every step count must be >= 1, got {counts}")
        if total_steps(counts) > LIMITS["max_steps"]:
            raise RequestError(f"these settings ask for {total_steps(counts)} integration steps per image "
                               f"({counts}); this server allows at most {LIMITS['max_steps']}")
        labels = self.pipe.labels(n, None if klass is None else [klass])
        return GenerationRequest(labels, sample, seed, klass, counts)

    # ------------------------------------------------------------------ generation

    def gflops_per_image(self, sample: SampleConfig) -> float:
        """GFLOPs per image at ``sample`` (latent space, decoding excluded: the protocol of
        :mod:`ecar.eval.cost`), counted on one image the first time and remembered."""
        return self.pipe.gflops(sample)

    def run(self, req: GenerationRequest, emit: Callable[[dict], None],
            cancelled: Flag | None = None) -> None:
        """Generate ``req`` and ``emit`` its events, in order:

        ``queued`` (only when other requests are ahead: how many), ``start`` (units, n),
        one ``unit`` per unit (its index and a PNG of every image at that unit, upsampled to
        the final size), ``done`` (the grid PNG, seconds, GFLOPs per image). Raises
        :class:`GenerationCancelled` when ``cancelled`` is set, at the next integration step
        (every sampler's step loop asks :func:`ecar.samplers.stop.check_stop`) or unit.
        """
        with self._count_lock:
            ahead = self._queued
            self._queued += 1
        try:
            if ahead:
                emit({"event": "queued", "ahead": ahead})
            t_queued = time.perf_counter()
            with self.lock:
                waited = time.perf_counter() - t_queued
                self._run_locked(req, emit, cancelled, waited)
        finally:
            with self._count_lock:
                self._queued -= 1

    def _run_locked(self, req: GenerationRequest, emit: Callable[[dict], None],
                    cancelled: Flag | None, waited: float) -> None:
        size = int(self.pipe.cfg.data.resolution or 0)
        scale = auto_scale(size, DISPLAY_PX)
        nrow = math.ceil(math.sqrt(req.n))
        emit({"event": "start", "units": req.units, "n": req.n, "waited_seconds": round(waited, 3)})
        shown = 0.0  # seconds spent encoding pictures for the page: not the model's cost
        unit, steps = 0, 0  # the unit running and its steps started: where a cancellation stops

        def check() -> None:  # before every integration step (ecar.samplers.stop) and unit
            if cancelled is not None and cancelled.is_set():
                raise GenerationCancelled("the request was cancelled", unit, req.units, steps)

        def step() -> None:
            nonlocal steps
            check()
            steps += 1

        def on_unit(i: int, images: torch.Tensor) -> None:
            nonlocal shown, unit, steps
            check()
            unit, steps = i + 1, 0
            t = time.perf_counter()
            tiles = to_uint8(upsample(images, size)) if images.shape[-1] != size else to_uint8(images)
            emit({"event": "unit", "index": i, "units": req.units, "size": int(images.shape[-1]),
                  "image": png_data_url(make_grid(tiles, nrow=nrow, scale=scale))})
            shown += time.perf_counter() - t

        t0 = time.perf_counter()
        drafted = self.pipe.draft is not None  # speculative decoding has no per-unit results
        with stop_when(step):
            out = self.pipe(labels=req.labels, sample=req.sample, seed=req.seed, batch_size=req.n,
                            on_unit=None if drafted else on_unit)
        seconds = time.perf_counter() - t0 - shown
        # a draft's work depends on what the target accepts: no single count (Output.gflops_per_image)
        gflops = None if drafted else self.gflops_per_image(req.sample)
        grid = png_data_url(make_grid(to_uint8(out.tensor), nrow=nrow, scale=scale))
        done = {"event": "done", "image": grid, "n": req.n, "labels": req.labels.tolist(), "seed": req.seed,
                "seconds": round(seconds, 4), "seconds_per_image": round(seconds / req.n, 5),
                "gflops_per_image": gflops, "step_counts": req.step_counts}
        if out.speculative is not None:
            done["speculative"] = _speculative_summary(out.speculative)
        emit(done)


def _speculative_summary(stats: dict) -> dict:
    """The numbers of a speculative call's statistics that the page shows: its finite scalars
    (JSON has no NaN) and the γ it ran with (the last choice: ``gamma=auto`` decides per call)."""
    out = {k: v for k, v in stats.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
           and not (isinstance(v, float) and not math.isfinite(v))}
    choices = stats.get("choices") or []
    if choices:
        out["gamma"] = choices[-1].get("gamma")
    return out


def load_slots(ckpts: list[str], device: torch.device, use_ema: bool = True,
               draft: str | None = None) -> list[ModelSlot]:
    """One :class:`ModelSlot` per checkpoint directory (ids ``m0``, ``m1``, … in order),
    loaded through :func:`ecar.load`; with ``draft`` (a draft checkpoint, ``ecar draft``)
    every model whose method can be drafted samples by speculative decoding with it.

    Raises :class:`ServeError` when ``draft`` fits none of the models."""
    pipes = [load(c, device, ema=use_ema) for c in ckpts]
    if draft is not None:
        proposer, reasons = load(draft, device, ema=use_ema), []
        for i, pipe in enumerate(pipes):
            try:
                pipes[i] = pipe.with_draft(proposer)
            except ConfigError as e:
                reasons.append(f"{ckpts[i]}: {e}")
        if len(reasons) == len(pipes):
            raise ServeError(f"--draft {draft} fits none of the models: " + " | ".join(reasons))
    return [ModelSlot(f"m{i}", str(Path(c)), pipe) for i, (c, pipe) in enumerate(zip(ckpts, pipes))]
