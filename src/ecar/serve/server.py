"""Run the app with uvicorn until SIGINT or SIGTERM, then stop cleanly.

uvicorn catches both signals, stops accepting connections, gives open streams
:data:`GRACE_SECONDS` to finish and then re-raises the signal it caught. We install our own
handlers first (uvicorn restores them before re-raising), so the re-raised signal lands
there and :func:`run_server` returns the signal's name instead of the process dying by
SIGTERM or unwinding through KeyboardInterrupt. The signal also sets the app's ``stopping``
flag at once, so a running generation stops at its next integration step (not only at the
end of its unit, which may take minutes on a loaded CPU): its stream ends with an ``error``
line well inside the grace period, and uvicorn has nothing left to cut. Before returning,
:func:`run_server` waits (up to :data:`GRACE_SECONDS`) for the generation threads, which are
daemons, so a thread stuck in one long step cannot keep the process alive either.
"""

from __future__ import annotations

import signal
import socket
import threading
import time

import uvicorn

from ecar.serve.app import create_app
from ecar.serve.session import ModelSlot, ServeError

__all__ = ["GRACE_SECONDS", "check_port", "run_server"]

GRACE_SECONDS = 3
"""How long open streams may run on after a stop signal before they are cut."""


def check_port(host: str, port: int) -> None:
    """Raise :class:`ServeError` unless ``host:port`` can be listened on (uvicorn would log
    the bind error and exit the process instead)."""
    try:
        socket.create_server((host, port)).close()
    except OSError as e:
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror or e}): pass another --port, "
                         f"or stop what uses it") from None


def run_server(slots: list[ModelSlot], host: str = "127.0.0.1", port: int = 7860,
               on_ready: str | None = None) -> str:
    """Serve ``slots`` on ``host:port`` until a stop signal; returns its name (``SIGINT``,
    ``SIGTERM``) or ``"stopped"``. ``on_ready`` is printed once the socket listens."""
    check_port(host, port)
    stopping = threading.Event()
    app = create_app(slots, stopping)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=GRACE_SECONDS, lifespan="off")
    server = _Server(config, on_ready, stopping)
    caught: list[int] = []

    def remember(sig: int, frame) -> None:
        caught.append(sig)
        stopping.set()

    previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run()
    finally:
        stopping.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _join(app.state.workers, GRACE_SECONDS)
    return signal.Signals(caught[0]).name if caught else "stopped"


def _join(workers: set[threading.Thread], seconds: float) -> None:
    """Wait up to ``seconds`` in all for the generation threads (each stops at its next step)."""
    deadline = time.monotonic() + seconds
    for worker in list(workers):
        worker.join(max(0.0, deadline - time.monotonic()))


class _Server(uvicorn.Server):
    """uvicorn's server, printing a line once it listens, and cancelling generations as soon
    as a stop signal arrives (not only after the grace period)."""

    def __init__(self, config: uvicorn.Config, on_ready: str | None, stopping: threading.Event):
        super().__init__(config)
        self.on_ready, self.stopping = on_ready, stopping

    def handle_exit(self, sig: int, frame) -> None:
        self.stopping.set()
        super().handle_exit(sig, frame)

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.on_ready and self.started:
            print(self.on_ready, flush=True)
