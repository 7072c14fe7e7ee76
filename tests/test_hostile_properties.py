"""Property tests of what a client or a user sends (Hypothesis; issue 30).

* The page's API (``POST /api/generate``, driven in-process through Starlette's test client,
  the app and models ``ecar serve`` runs): whatever body arrives — generated JSON with the
  real field and setting names, wrong types, huge and non-finite numbers, numbers of
  thousands of digits, nesting tens of thousands deep, bytes that are not UTF-8 — the answer
  is never a 5xx. A refusal is a 4xx with one JSON reason on one line; an accepted request
  streams to its ``done`` event (validation let nothing through that fails later).
* List options: an entry of a list is checked by the rule of the scalar it holds, with that
  scalar's message (the name carrying the entry's index): ``--seeds`` as ``--seed`` on the
  command line, ``sample.stage_steps`` as ``sample.steps`` in a recipe and on the page,
  ``--sweep`` as a multiplier > 0; a list of valid entries passes the check.

Valid generations are kept cheap (one or two images, shipped settings or one step) so that
the file runs in seconds.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from ecar.cli import main
from ecar.config import ConfigError, load_config
from ecar.serve import LIMITS, RequestError, create_app, load_slots
from ecar.serve.session import REQUEST_KEYS

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SETTING_NAMES = ["sampler", "steps", "cfg", "cfg_schedule", "cfg_interval", "noise_scale", "stage_steps"]


@pytest.fixture(scope="module")
def slots(serve_runs):
    return load_slots([str(r) for r in serve_runs], torch.device("cpu"))


@pytest.fixture(scope="module")
def client(slots):
    with TestClient(create_app(slots), raise_server_exceptions=False) as c:
        yield c


# --------------------------------------------------------------------------- the page's API

digits = st.text("0123456789", min_size=1, max_size=6000)
# numbers: never a valid expensive value (n, steps, cfg in range take the cheap strategies below)
numbers = st.one_of(
    st.integers(max_value=0), st.integers(min_value=10_000), st.integers(-(2**70), -(2**62)),
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda x: not 0 < x < 1e4),
    st.sampled_from([2**31, 2**63, 2**64, -1, 0.5, 1e308, -0.0]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30),
                    digits.map(lambda d: d[:30]), st.sampled_from(["", "all", " 1 ", "-0", "1e9", "nan", "∞", "1,,1"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(SETTING_NAMES + list(REQUEST_KEYS)), st.text(max_size=8)),
                    inner, max_size=4),
), max_leaves=12)
cheap_settings = st.sampled_from([{}, None, {"steps": "1"}, {"steps": 1, "cfg": ""}])
settings_field = st.one_of(
    cheap_settings, values,
    st.dictionaries(st.one_of(st.sampled_from(SETTING_NAMES), st.text(max_size=12)),
                    st.one_of(values, st.sampled_from(["", "1", "1,1,1", "0,1,1", "1,x"]),
                              digits.map(lambda d: "1," + d)), max_size=4),
)
bodies = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.sampled_from(["m0", "m1"]), values),
    "class": st.one_of(st.sampled_from([None, 0, 9, "3", "all"]), values, digits),
    "n": st.one_of(st.sampled_from([1, 2, "2", 2.0]), values, digits),
    "seed": st.one_of(st.integers(0, 3), values, digits),
    "settings": settings_field,
    "colour": values,
})


def _encode(body: dict, how: str, depth: int, number: str) -> bytes:
    """A body as bytes, as a hostile client may send it: as is, wrapped in ``depth`` arrays,
    with a raw number of many digits (beyond what json.dumps may write) spliced in, or cut."""
    text = json.dumps(body, allow_nan=True)
    if how == "nested":
        text = "[" * depth + text + "]" * depth
    elif how == "long number":
        text = text[:-1] + (", " if len(text) > 2 else "") + f'"n": {number}}}'
    elif how == "cut":
        text = text[: max(0, len(text) - depth % 7 - 1)]
    return text.encode()


raw_bodies = st.one_of(
    st.builds(_encode, bodies, st.sampled_from(["plain", "plain", "nested", "long number", "cut"]),
              st.integers(0, 40_000), digits),
    st.binary(max_size=300),
    st.integers(1, 40_000).map(lambda d: b"{" * d),
    st.integers(1, 40_000).map(lambda d: b'{"settings": ' * d + b"1" + b"}" * d),
    st.sampled_from([b"", b"null", b"[]", b'"x"', b"NaN", b"-Infinity", b"1e999", b"\xef\xbb\xbf{}"]),
)


@SETTINGS
@given(raw_bodies)
def test_no_body_gets_a_5xx(client, body):
    r = client.post("/api/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code < 500, (body[:200], r.status_code, r.text[:300])
    if r.status_code != 200:
        assert 400 <= r.status_code < 500
        data = r.json()
        assert list(data) == ["error"] and isinstance(data["error"], str) and data["error"]
        assert "\n" not in data["error"] and len(data["error"]) <= 2000 and "Traceback" not in data["error"]
        return
    events = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    assert events[-1]["event"] == "done", events[-1]  # nothing accepted fails during generation


# --------------------------------------------------------------------------- list options


def _first_bad(entries: list, ok) -> int | None:
    return next((i for i, v in enumerate(entries) if not ok(v)), None)


def _first_bad_step(entries: list[int]) -> int | None:
    """The entry a step list is refused for: types first (64-bit integers, every entry), then
    ranges (>= 1) — the order in which a recipe's fields are checked."""
    wide = _first_bad(entries, lambda v: -(2**63) <= v < 2**63)
    return wide if wide is not None else _first_bad(entries, lambda v: v >= 1)


def _cli_error(capsys, argv: list[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return code, lines[0]


seed_entries = st.lists(st.one_of(st.integers(0, 5), st.integers(-(2**64), 2**64),
                                  st.sampled_from([-1, 2**63 - 1, 2**63, 2**32])), max_size=5)


@SETTINGS
@given(seed_entries)
def test_seed_list_entries_follow_the_seed_rule(capsys, tmp_path_factory, seeds):
    missing = str(tmp_path_factory.getbasetemp() / "no-such-run")
    base = ["eval", "--ckpt", missing, "--n", "4"]
    code, line = _cli_error(capsys, [*base, "--seeds=" + ",".join(map(str, seeds))])
    bad = _first_bad(seeds, lambda v: 0 <= v < 2**63)
    if bad is None:  # every entry valid: the command goes on, to the missing checkpoint
        assert code == 1 and "does not exist" in line, line
        return
    assert code == 2
    scalar_code, scalar = _cli_error(capsys, [*base, f"--seed={seeds[bad]}"])
    assert scalar_code == 2 and line == scalar.replace("--seed=", f"--seeds[{bad}]=", 1)


@SETTINGS
@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1.0, 2.0])),
                min_size=1, max_size=4))
def test_sweep_entries_are_finite_multipliers_above_zero(capsys, tmp_path_factory, sweep):
    root = tmp_path_factory.getbasetemp()
    out = root / "bench-out"
    code, line = _cli_error(capsys, ["bench", "--ckpts", str(root / "no-such-run"), "--out", str(out),
                                     "--sweep=" + ",".join(map(repr, sweep))])
    bad = _first_bad(sweep, lambda v: math.isfinite(v) and v > 0)
    if bad is None:
        assert code == 1 and "does not exist" in line, line
    else:
        assert code == 2 and line.startswith(f"error: --sweep[{bad}]={sweep[bad]!r} is not valid: it must be "), line
    assert not out.exists()


step_entries = st.lists(st.one_of(st.integers(1, 4), st.integers(-(2**65), 2**65), st.sampled_from([0, -1, 2**63])),
                        min_size=1, max_size=4)


def _config_error(overrides: list[str]) -> str | None:
    try:
        load_config(None, ["model.name=ecar-tiny", *overrides])
    except ConfigError as e:
        return str(e)
    return None


@SETTINGS
@given(step_entries)
def test_stage_steps_entries_follow_the_steps_rule_in_a_recipe(steps):
    message = _config_error([f"sample.stage_steps={steps}"])
    bad = _first_bad_step(steps)
    if bad is None:
        assert message is None
        return
    scalar = _config_error([f"sample.steps={steps[bad]}"])
    assert scalar is not None and message == scalar.replace("sample.steps", f"sample.stage_steps[{bad}]", 1)


@SETTINGS
@given(step_entries)
def test_stage_steps_entries_follow_the_steps_rule_on_the_page(slots, steps):
    ecar = slots[0]

    def reason(setting: dict) -> str | None:
        try:
            ecar.parse({"n": 1, "settings": setting})
        except RequestError as e:
            return str(e)
        return None

    message = reason({"stage_steps": ",".join(map(str, steps))})
    bad = _first_bad_step(steps)
    if bad is None:  # valid entries: refused only for the model's stage count or the step budget
        assert message is None or "stage_steps[" not in message, message
        return
    scalar = reason({"steps": str(steps[bad])})
    assert scalar is not None and message == scalar.replace("sample.steps", f"sample.stage_steps[{bad}]", 1)


def test_the_limits_are_served(client):
    assert client.get("/api/models").json()["limits"] == LIMITS
    assert {"max_body_bytes", "max_json_depth", "max_number_chars"} <= set(LIMITS)
