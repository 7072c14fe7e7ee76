"""`ecar serve` (issue 10): the API streams one image per unit, then the grid and the cost; every
bad value gets a 4xx with a message (never a traceback); one generation at a time per model,
and concurrent requests finish without seeing each other's images; the command's own errors;
clean stops on SIGINT and SIGTERM that leave no process behind. The page itself is driven in
Chromium by tests/test_serve_browser.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

import ecar.cli.serve
import ecar.serve
from conftest import NO_PROXY
from ecar.cli import main
from ecar.imageio import auto_scale, make_grid, to_uint8
from ecar.serve import LIMITS, create_app, load_slots
from ecar.serve.session import DISPLAY_PX, GenerationCancelled


@pytest.fixture(scope="module")
def slots(serve_runs):
    return load_slots([str(r) for r in serve_runs], torch.device("cpu"))


@pytest.fixture(scope="module")
def client(slots):
    with TestClient(create_app(slots)) as c:
        yield c


def _events(response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def _png(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


# --------------------------------------------------------------------------- the API


def test_page_and_models(client, slots):
    page = client.get("/")
    assert page.status_code == 200 and "Generate" in page.text and "/api/generate" in page.text
    data = client.get("/api/models").json()
    assert data["limits"] == LIMITS
    ecar_m, dit_m = data["models"]
    assert (ecar_m["id"], ecar_m["method"], ecar_m["units"], ecar_m["num_classes"]) == ("m0", "ecar", 3, 10)
    assert (dit_m["id"], dit_m["method"], dit_m["units"]) == ("m1", "dit", 1)
    # the form's fields are the method's own sampling settings, as the checkpoint ships them
    settings = {s["name"]: s for s in ecar_m["settings"]}
    assert settings["stage_steps"]["value"] == "2,2,2" and settings["cfg"]["value"] == "2.0"
    assert settings["sampler"]["choices"] and "stage_steps" not in {s["name"] for s in dit_m["settings"]}
    # only what acts on the method (E-CAR's steps are per stage), labelled in words, and no local path
    assert list(settings) == ["sampler", "stage_steps", "cfg", "cfg_schedule", "cfg_interval"]
    assert settings["stage_steps"]["label"] == "steps per stage (coarse to fine)"
    assert [s["name"] for s in dit_m["settings"]] == ["sampler", "steps", "cfg", "cfg_schedule", "cfg_interval"]
    assert "ckpt" not in ecar_m and str(slots[0].ckpt) not in json.dumps(data)


def test_generate_streams_each_stage_then_the_grid_and_the_cost(client, slots):
    body = {"model": "m0", "class": 3, "n": 4, "seed": 7, "settings": {"stage_steps": "2,1,2", "cfg": "1.5"}}
    r = client.post("/api/generate", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    events = _events(r)
    assert [e["event"] for e in events] == ["start", "unit", "unit", "unit", "done"]
    units = events[1:4]
    assert [u["index"] for u in units] == [0, 1, 2] and [u["size"] for u in units] == [4, 8, 16]
    pictures = [_png(u["image"]) for u in units] + [_png(events[-1]["image"])]
    assert len({p.shape for p in pictures}) == 1  # every stage upsampled to the grid's size
    done = events[-1]
    assert done["labels"] == [3, 3, 3, 3] and done["step_counts"] == [2, 1, 2]
    assert done["gflops_per_image"] > 0 and done["seconds"] > 0
    # the same images as `ecar sample` gives for these settings and seed
    want = slots[0].pipe(4, classes=[3], seed=7, stage_steps=[2, 1, 2], cfg=1.5).tensor
    grid = make_grid(to_uint8(want), nrow=2, scale=auto_scale(16, DISPLAY_PX))
    assert np.array_equal(pictures[-1], grid[..., 0])
    assert np.array_equal(pictures[2], pictures[-1])  # the last stage is the result


def test_a_one_unit_model_streams_its_result_once(client):
    events = _events(client.post("/api/generate", json={"model": "m1", "class": None, "n": 3, "seed": 0}))
    assert [e["event"] for e in events] == ["start", "unit", "done"]
    assert events[-1]["labels"] == [0, 1, 2] and events[-1]["step_counts"] == 4


BAD = [
    ({"class": 10}, "class 10 is out of range: this model has classes 0 to 9"),
    ({"class": -1}, "out of range"),
    ({"class": "seven"}, "out of range"),
    ({"n": 0}, "n (the number of images) must be an integer from 1 to 64"),
    ({"n": 65}, "from 1 to 64, got 65"),
    ({"n": "many"}, "from 1 to 64"),
    ({"n": 2.5}, "from 1 to 64"),
    ({"seed": -1}, "seed must be an integer"),
    ({"settings": {"stage_steps": "0,2,2"}}, "sample.stage_steps[0]=0 is not valid: it must be >= 1"),
    ({"settings": {"stage_steps": "-3,2,2"}}, ">= 1"),
    ({"settings": {"steps": "0"}}, "sample.steps=0 is not valid: it must be >= 1"),
    ({"settings": {"stage_steps": "2,2"}}, "needs 3 entries >= 1"),
    ({"settings": {"stage_steps": "400,400,400"}}, "1200 integration steps per image"),
    ({"settings": {"stage_steps": "1e9,1,1"}}, "expected comma-separated integers"),
    ({"settings": {"cfg": "nan"}}, "cfg: expected a finite number"),
    ({"settings": {"cfg": "inf"}}, "cfg: expected a finite number"),
    ({"settings": {"cfg": "-inf"}}, "finite"),
    ({"settings": {"cfg": "strong"}}, "setting cfg: expected a number"),
    ({"settings": {"cfg": 25}}, "guidance (cfg) must be from 0 to 20"),
    ({"settings": {"sampler": "rk45"}}, "choose one of"),
    ({"settings": {"iterations": "4"}}, "unknown key 'sample.iterations'"),
    ({"settings": "fast"}, "settings must be an object"),
    ({"colour": "red"}, "unknown field(s) colour"),
]


@pytest.mark.parametrize("fields,message", BAD, ids=[f"{k}={v}" for k, v in (next(iter(b[0].items())) for b in BAD)])
def test_every_bad_value_is_a_4xx_with_a_message(client, fields, message):
    r = client.post("/api/generate", json={"model": "m0", "class": 1, "n": 2, **fields})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"] and "Traceback" not in r.text


def test_bad_requests_beyond_the_fields(client):
    r = client.post("/api/generate", json={"model": "m1", "settings": {"steps": "1001"}})
    assert r.status_code == 400 and "at most 1000" in r.json()["error"]
    r = client.post("/api/generate", content=b'{"model": "m0", "settings": {"cfg": NaN}}')
    assert r.status_code == 400 and "finite" in r.json()["error"]  # JSON's NaN, not only the string
    r = client.post("/api/generate", content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = client.post("/api/generate", json=[1, 2])
    assert r.status_code == 400 and "must be a JSON object" in r.json()["error"]
    r = client.post("/api/generate", json={"model": "m7"})
    assert r.status_code == 404 and "m0, m1" in r.json()["error"]
    assert client.get("/api/generate").status_code == 405


HOSTILE_BODIES = {  # issue 30: the first two were answered with HTTP 500 and a traceback in the log
    "n as 5,000 digits in a string": (b'{"n": "' + b"9" * 5000 + b'"}', 400, "n (the number of images)"),
    "nested 20,000 deep": (b"[" * 20000 + b"]" * 20000, 400, "more than 16 levels deep"),
    "nested 50,000 deep": (b"[" * 50000 + b"]" * 50000, 413, "larger than 65,536 bytes"),
    "n as a 5,000-digit number": (b'{"n": ' + b"9" * 5000 + b"}", 400, "a number of 5,000 characters"),
    "seed 1e999": (b'{"seed": 1e999}', 400, "beyond the finite numbers"),
    "steps as 5,000 digits": (b'{"settings": {"steps": "' + b"9" * 5000 + b'"}}', 400, "setting steps: expected an integer"),
    "stage_steps entry of 5,000 digits": (b'{"settings": {"stage_steps": "1,' + b"9" * 5000 + b',1"}}', 400,
                                          "expected comma-separated integers"),
    "class as 30 digits": (b'{"class": "' + b"1" * 30 + b'"}', 400, "out of range"),
    "class a deep list": (b'{"class": [[[[1]]]]}', 400, "out of range"),
    "not UTF-8": (b'{"n": "\xff"}', 400, "not UTF-8"),
    "a key with a newline": (b'{"a\\nb": 1}', 400, "unknown field(s) 'a\\nb'"),
    "a 60,000-character model name": (b'{"model": "' + b"m" * 60000 + b'"}', 404, "unknown model"),
    "Infinity": (b'{"settings": {"cfg": Infinity}}', 400, "numbers must be finite"),
    "truncated": (b'{"n": 2, "settings": {', 400, "not valid JSON"),
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_hostile_bodies_get_a_4xx_with_one_line(slots, name):
    """Bodies are bounded before they are parsed (size, depth, digits of a number): whatever
    arrives ends in a 4xx and one JSON reason on one line, never a 500."""
    body, status, reason = HOSTILE_BODIES[name]
    with TestClient(create_app(slots), raise_server_exceptions=False) as c:
        r = c.post("/api/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text[:300]
    data = r.json()
    assert list(data) == ["error"] and reason in data["error"], data
    assert "\n" not in data["error"] and len(data["error"]) < 400 and "Traceback" not in r.text


def test_a_body_larger_than_the_limit_is_refused_by_its_length(slots):
    big = LIMITS["max_body_bytes"] + 1
    with TestClient(create_app(slots), raise_server_exceptions=False) as c:
        r = c.post("/api/generate", content=b" " * big)
        assert r.status_code == 413 and "larger than" in r.json()["error"]
        r = c.post("/api/generate", content=b"{}", headers={"content-length": "9" * 5000})
        assert r.status_code in (400, 413)


# --------------------------------------------------------------------------- queue and isolation


def test_one_generation_at_a_time_per_model(slots):
    """A second request on a busy model waits (told how many are ahead) until the first is done."""
    slot = slots[0]
    first_unit, release = threading.Event(), threading.Event()
    log: list[tuple[str, str]] = []

    def emit_a(ev):
        log.append(("a", ev["event"]))
        if ev["event"] == "unit" and ev["index"] == 0:
            first_unit.set()
            release.wait(30)

    def emit_b(ev):
        log.append(("b", ev["event"]))
        if ev["event"] == "queued":
            assert ev["ahead"] == 1

    a = threading.Thread(target=slot.run, args=(slot.parse({"class": 1, "n": 2}), emit_a))
    a.start()
    assert first_unit.wait(30)
    b = threading.Thread(target=slot.run, args=(slot.parse({"class": 2, "n": 2}), emit_b))
    b.start()
    deadline = time.monotonic() + 10
    while ("b", "queued") not in log and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert ("b", "queued") in log and ("b", "start") not in log  # waiting while a holds the model
    release.set()
    a.join(30)
    b.join(30)
    assert log.index(("a", "done")) < log.index(("b", "start")) and log[-1] == ("b", "done")


def test_a_cancelled_generation_stops_and_frees_the_model(slots):
    slot, cancel, seen = slots[0], threading.Event(), []

    def emit(ev):
        seen.append(ev["event"])
        if ev["event"] == "unit":
            cancel.set()

    with pytest.raises(GenerationCancelled):
        slot.run(slot.parse({"n": 2}), emit, cancel)
    assert seen == ["start", "unit"] and not slot.lock.locked() and not slot.pipe.model.training


def _post(url: str, body: dict) -> tuple[int, list[dict] | dict]:
    req = urllib.request.Request(url + "/api/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(req, timeout=120) as r:
            return r.status, [json.loads(line) for line in r.read().decode().splitlines() if line]
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _pictures(events: list[dict]) -> list[np.ndarray]:
    return [_png(e["image"]).astype(int) for e in events if "image" in e]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    """Equal up to one grey level: a run beside another model's may split its matmuls over
    the cores differently (rounding), while another request's images differ everywhere."""
    return len(a) == len(b) and all(x.shape == y.shape and np.abs(x - y).max() <= 1 for x, y in zip(a, b))


def test_concurrent_requests_both_finish_with_their_own_images(serve_server):
    """Over HTTP, against a running `ecar serve`: three requests at once (two on the same
    model) all finish, and each gets exactly what it gets alone."""
    url = serve_server.url
    bodies = [{"model": "m0", "class": 1, "n": 6, "seed": 11},
              {"model": "m0", "class": 2, "n": 6, "seed": 12, "settings": {"cfg": "3"}},
              {"model": "m1", "class": 5, "n": 4, "seed": 13}]
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: _post(url, b), bodies))
    alone = [_post(url, b) for b in bodies]
    for body, (status, events), (_, solo) in zip(bodies, together, alone):
        assert status == 200 and events[-1]["event"] == "done", events
        assert events[-1]["labels"] == [body["class"]] * body["n"]
        assert _same(_pictures(events), _pictures(solo))
    grid_a, grid_b = _pictures(together[0][1])[-1], _pictures(together[1][1])[-1]
    assert np.abs(grid_a - grid_b).mean() > 5


# --------------------------------------------------------------------------- the command


def test_serve_without_ckpt_and_without_demo_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "ecar demo" in err and "--ckpt" in err and "Traceback" not in err


def test_serve_without_the_web_extra_says_what_to_install(serve_runs, monkeypatch, capsys):
    monkeypatch.setattr(ecar.serve, "WEB_MISSING", "starlette")
    assert main(["serve", "--ckpt", str(serve_runs[0])]) == 2
    assert "pip install 'ecar[serve]'" in capsys.readouterr().err


def test_serve_on_a_taken_port_is_a_clear_error(serve_runs, capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["serve", "--ckpt", str(serve_runs[0]), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serve_without_ckpt_uses_the_demo_checkpoint(serve_runs, tmp_path, monkeypatch, capsys):
    (tmp_path / "ecar-demo").mkdir()
    os.symlink(serve_runs[0], tmp_path / "ecar-demo" / "run")
    monkeypatch.chdir(tmp_path)
    served = {}

    def fake_run_server(slots, host, port, on_ready=None):
        served.update(slots=slots, host=host, port=port)
        return "SIGTERM"

    monkeypatch.setattr(ecar.cli.serve, "run_server", fake_run_server)
    assert main(["serve"]) == 0
    assert [s.ckpt for s in served["slots"]] == [str(Path("ecar-demo") / "run")]
    assert (served["host"], served["port"]) == ("127.0.0.1", 7860)  # this machine only, by default
    assert "stopped (SIGTERM)" in capsys.readouterr().out


def _process_group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (Linux /proc): what a server started with its
    own session (and anything it started) would leave behind."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_saturated_cpu_keeps_the_cores_busy(saturated_cpu):
    """The load the signal tests run under: every child spins (it gains CPU time)."""
    assert len(saturated_cpu) == (os.cpu_count() or 1)
    before = [_cpu_seconds(p) for p in saturated_cpu]
    time.sleep(1.0)
    gained = [_cpu_seconds(p) - b for p, b in zip(saturated_cpu, before)]
    assert all(g > 0.05 for g in gained), gained


def _assert_clean_exit(server, sig: signal.Signals) -> None:
    """Exit 0 with the reason, no traceback, the port free, nothing left in its group."""
    out = server.output()
    assert server.proc.returncode == 0, out
    assert f"stopped ({sig.name})" in out and "Traceback" not in out and "Exception in ASGI" not in out, out
    socket.create_server(("127.0.0.1", server.port)).close()
    assert not _process_group(server.proc.pid)


@SIGNALS
def test_the_server_stops_cleanly_on_a_signal(serve_runs, serve_process, saturated_cpu, sig):
    """Idle, with every core busy elsewhere: the process exits 0, says why, frees its port and
    leaves no child behind (ServeProcess.stop kills it after 30 s, which fails the exit code)."""
    server = serve_process([serve_runs[0]])
    server.stop(sig)
    _assert_clean_exit(server, sig)


LONG_MIDDLE = {"model": "m0", "n": 64, "settings": {"stage_steps": "1,998,1"}}
"""A request whose second unit (stage) takes 998 steps: a signal sent just after the first
unit arrives lands inside it."""


@SIGNALS
def test_a_stop_signal_cancels_the_generation_at_its_next_step(serve_runs, serve_process, saturated_cpu, sig):
    """Issue 29: promptness counted in steps, not seconds. The server is paused (SIGSTOP) just
    after it streamed unit 1 of 3, i.e. inside the 998-step unit 2; the signal is sent and the
    server resumed. The generation stops inside unit 2 — no unit is streamed after the signal
    and fewer than its 998 steps ran — the stream ends with one cancellation line, and the
    process exits 0 with no traceback."""
    server = serve_process([serve_runs[0]])
    req = urllib.request.Request(server.url + "/api/generate", data=json.dumps(LONG_MIDDLE).encode(),
                                 headers={"Content-Type": "application/json"})
    with NO_PROXY.open(req, timeout=120) as r:
        assert r.status == 200
        first = [json.loads(r.readline()), json.loads(r.readline())]
        os.kill(server.proc.pid, signal.SIGSTOP)  # the generation held at a known point
        try:
            assert [e["event"] for e in first] == ["start", "unit"] and first[1]["index"] == 0, first
            os.kill(server.proc.pid, sig)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        after = [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]
    server.proc.wait(60)
    assert [e["event"] for e in after] == ["error"], after  # no unit (nor the result) after the signal
    message = after[0]["message"]
    assert message.startswith("generation cancelled (the server is stopping) at unit 2 of 3, after "), message
    steps = int(message.split("after ")[1].split()[0])
    assert 0 <= steps < 998, message
    _assert_clean_exit(server, sig)


def test_a_client_that_goes_away_then_a_stop_leave_no_traceback(serve_runs, serve_process, saturated_cpu):
    """The other way a stream ends: the client closes it mid-generation (the generation is
    cancelled and frees the model: the next request on it finishes), then SIGTERM."""
    server = serve_process([serve_runs[0]])
    req = urllib.request.Request(server.url + "/api/generate", data=json.dumps(LONG_MIDDLE).encode(),
                                 headers={"Content-Type": "application/json"})
    with NO_PROXY.open(req, timeout=120) as r:
        assert json.loads(r.readline())["event"] == "start"
    status, events = _post(server.url, {"model": "m0", "n": 1})  # the model was freed: this one runs
    assert status == 200 and events[-1]["event"] == "done", events[-1]
    server.stop(signal.SIGTERM)
    _assert_clean_exit(server, signal.SIGTERM)


@pytest.mark.parametrize("stopping_first", [True, False], ids=["stopping", "not-stopping"])
def test_a_request_the_stop_cuts_ends_without_a_traceback(slots, caplog, stopping_first):
    """The last shutdown path: a request still running when uvicorn cancels it (after the
    grace period) ends with one warning, not an exception for uvicorn to log with its
    task-group frames. Outside a stop, a cancellation passes through as it is."""
    stopping = threading.Event()
    app = create_app(slots, stopping)
    body = json.dumps(LONG_MIDDLE).encode()
    sent: list[dict] = []

    async def call() -> None:
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)  # the client stays connected

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/api/generate", "raw_path": b"/api/generate", "query_string": b"",
                 "root_path": "", "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2)}
        task = asyncio.ensure_future(app(scope, receive, send))
        while not any(m.get("body", b"").startswith(b'{"event": "unit"') for m in sent):
            await asyncio.sleep(0.01)
        if stopping_first:
            stopping.set()
        task.cancel()  # what uvicorn does to a task past the grace period
        await task

    with caplog.at_level("WARNING", logger="ecar.serve"):
        if stopping_first:
            asyncio.run(call())  # returns: no CancelledError, no exception group
            assert "a request was cut off by the stop" in caplog.text
        else:
            with pytest.raises(asyncio.CancelledError):
                asyncio.run(call())
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert "Traceback" not in caplog.text
