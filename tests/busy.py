"""A loaded machine for tests that must hold under load (issue 29, part 4).

CI runners share their cores, so the serve and crash tests run with every core kept busy by
:func:`saturated` (the ``saturated_cpu`` fixture in conftest.py wraps it for a single test; a
module-scoped fixture uses the context manager directly). Their checks count steps and events,
never seconds of a machine that may be busy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

BUSY_LOOP = "while True:\n    pass\n"


@contextmanager
def saturated(n: int | None = None) -> Iterator[list[int]]:
    """``n`` (default ``os.cpu_count()``) child processes spinning in a Python loop, each in its
    own session, killed on exit. Yields their PIDs."""
    n = n or os.cpu_count() or 1
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for _ in range(n)]
    try:
        time.sleep(0.2)
        dead = [p.args for p in procs if p.poll() is not None]
        assert not dead, f"a busy-loop child exited at once: {dead}"
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
