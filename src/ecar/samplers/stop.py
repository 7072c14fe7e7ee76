"""A cooperative stop between integration steps, for a caller that may have to cancel a
generation (``ecar serve`` when its client goes away or the process gets a stop signal).

Every step loop of :mod:`ecar.samplers` (the ODE/SDE integrators and the Gaussian chains)
calls :func:`check_stop` before each step. Outside a :func:`stop_when` block it does nothing.
Inside one, it calls the block's ``check``, which raises whatever exception the caller wants
to see (the samplers never name it). The check lives in a context variable, so it belongs
to the thread (or task) that opened the block: two generations side by side, each in its own
thread, never stop each other. A stop at a step leaves no state behind: the loops hold
nothing outside their own frame, and :class:`ecar.Pipeline` restores the model's
mode on the way out.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

__all__ = ["check_stop", "stop_when"]

_CHECK: ContextVar[Callable[[], None] | None] = ContextVar("ecar_stop_check", default=None)


def check_stop() -> None:
    """Call the innermost :func:`stop_when` check of this thread, if any (it may raise)."""
    check = _CHECK.get()
    if check is not None:
        check()


@contextmanager
def stop_when(check: Callable[[], None]) -> Iterator[None]:
    """Within the block, every integration step first calls ``check()``; to cancel, make it
    raise. Blocks nest (the inner check replaces the outer one until it ends)."""
    token = _CHECK.set(check)
    try:
        yield
    finally:
        _CHECK.reset(token)
