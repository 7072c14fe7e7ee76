import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from busy import saturated

from ecar.config import load_config
from ecar.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: tiny models gain nothing from intra-op threads,
    and on shared cores they lose a lot. (A module asks for it with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``.)"""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def tiny_overrides():
    """Overrides that make any recipe train in seconds."""
    return [
        "train.batch_size=16", "train.log_every=1", "train.warmup_steps=2",
        "train.tensorboard=false", "sample.steps=2",
    ]


def require_fashion_mnist():
    """Directory of the Fashion-MNIST files, or skip the calling test when they are absent.

    With ``ECAR_REQUIRE_DATASETS=1`` (set by ``.ci/run``) a missing dataset fails the test
    instead, so CI cannot go green by skipping. The message is the dataset's own error,
    which says how to install it (``apt-get install dataset-fashion-mnist``, or download
    the four files and set ``ECAR_FASHION_MNIST``).
    """
    from ecar.data import DataError
    from ecar.data.fashion_mnist import find_fashion_mnist

    try:
        return find_fashion_mnist()
    except DataError as e:
        if os.environ.get("ECAR_REQUIRE_DATASETS", "").strip() not in ("", "0"):
            pytest.fail(f"ECAR_REQUIRE_DATASETS is set but {e}", pytrace=False)
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def fashion_mnist_dir():
    """:func:`require_fashion_mnist` as a fixture (skips or fails once per session)."""
    return require_fashion_mnist()


# --------------------------------------------------------------------------- a loaded machine

@pytest.fixture
def saturated_cpu():
    """Keep every core busy while the test runs (issue 29): ``os.cpu_count()`` child processes
    spinning in a Python loop (tests/busy.py), killed when the test ends. A test that must hold
    on a loaded machine (CI runners share their cores) uses it, so its checks count steps and
    events, never seconds. Yields the children's PIDs."""
    with saturated() as pids:
        yield pids


# --------------------------------------------------------------------------- `ecar serve`

TINY_SERVE_NET = [
    "model.hidden=32", "model.depth=1", "model.heads=2", "train.batch_size=8", "train.warmup_steps=1",
    "train.log_every=1", "train.tensorboard=false", "train.max_steps=2",
]


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two 2-step digits checkpoints for the `ecar serve` tests: E-CAR (3 stages, 2 steps
    each) and DiT (one unit, 4 steps). Weights are barely trained: the tests check the
    plumbing, not the pictures."""
    root = tmp_path_factory.mktemp("serve-runs")
    ecar = load_config(ROOT / "configs" / "digits_ecar.yaml",
                       [*TINY_SERVE_NET, "model.head_width=32", "model.head_depth=1", "sample.stage_steps=[2,2,2]"])
    dit = load_config(ROOT / "configs" / "digits_dit.yaml", [*TINY_SERVE_NET, "sample.steps=4"])
    train(ecar, root / "ecar", progress=False)
    train(dit, root / "dit", progress=False)
    return root / "ecar", root / "dit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """An `ecar serve` subprocess on 127.0.0.1 (its own process group, output in a file)."""

    def __init__(self, ckpts, log_dir: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"serve-{self.port}.log"
        cmd = [sys.executable, "-m", "ecar", "serve", "--port", str(self.port), *extra]
        for c in ckpts:
            cmd += ["--ckpt", str(c)]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        self._wait_ready()

    def output(self) -> str:
        return self.log.read_text()

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ecar serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with NO_PROXY.open(self.url + "/api/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.kill()
        raise AssertionError(f"ecar serve did not answer within {timeout:.0f} s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit; returns the exit code (kills it after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""urllib without the environment's proxies: the servers under test are on loopback."""


@pytest.fixture
def serve_process(tmp_path):
    """Start `ecar serve` subprocesses: ``serve_process(ckpts, *flags)``; all are stopped (and,
    if they hang, killed) when the test ends, so none outlives it."""
    started: list[ServeProcess] = []

    def start(ckpts, *extra: str) -> ServeProcess:
        server = ServeProcess(ckpts, tmp_path, *extra)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def serve_server(serve_runs, tmp_path_factory):
    """One `ecar serve` with both tiny checkpoints (m0 = E-CAR, m1 = DiT) for the session."""
    server = ServeProcess(serve_runs, tmp_path_factory.mktemp("serve-log"))
    yield server
    server.stop()
