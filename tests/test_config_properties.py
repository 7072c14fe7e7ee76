"""Property tests of the config loader and overrides (Hypothesis; issue 11, part 4).

Whatever YAML document, file bytes or ``key=value`` strings a user gives, loading ends in
one of two ways: a valid :class:`Config` (which survives a round trip through its own
YAML), or a :class:`ConfigError` — never another exception. The strategies mix the real
section and field names (so many examples reach the typed fields and their checks) with
arbitrary keys and values: huge and non-finite numbers, nested containers, odd strings.
Examples are bounded so the suite stays fast.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecar.config import SECTIONS, Config, ConfigError, config_from_dict, config_to_yaml, load_config
from ecar.methods import METHODS, model_names
from ecar.schema import field_names, load_yaml_text

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SECTION_NAMES = [f.name for f in dataclasses.fields(Config)]
FIELD_NAMES = sorted(
    {n for cls in SECTIONS.values() for n in field_names(cls)}
    | {n for m in METHODS.values() for n in field_names(m.config_cls) + field_names(m.sample_config_cls)}
)

scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(-(2**70), 2**70), st.sampled_from([0, 1, -1, 2, 3, 4, 8, 16]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.5, 1.0, 1.5, -1.0, 1e-3]),
    st.text(max_size=20), st.sampled_from(model_names() + ["auto", "cpu", "cuda", "euler", "digits"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5),
    st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8)), inner, max_size=5),
), max_leaves=20)
sections = st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=6)
documents = st.one_of(
    st.dictionaries(st.one_of(st.sampled_from(SECTION_NAMES), st.text(max_size=8)),
                    st.one_of(sections, values), max_size=6),
    values,
)


def _loads_or_refuses(load) -> None:
    """``load()`` returns a valid Config (that round-trips) or raises ConfigError."""
    try:
        cfg = load()
    except ConfigError as e:
        assert str(e)
        assert len(str(e)) < 5000  # messages quote bounded values
        return
    assert isinstance(cfg, Config)
    assert config_from_dict(yaml.safe_load(config_to_yaml(cfg))) == cfg


@SETTINGS
@given(documents)
def test_any_yaml_document_gives_a_config_or_a_config_error(doc):
    text = yaml.safe_dump(doc, allow_unicode=True)
    _loads_or_refuses(lambda: config_from_dict(load_yaml_text(text, "doc") or {}))


@SETTINGS
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 documents.map(lambda d: yaml.safe_dump(d).encode())))
def test_any_file_gives_a_config_or_a_config_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_bytes(data)
        _loads_or_refuses(lambda: load_config(path))


keys = st.one_of(
    st.builds(lambda s, f: f"{s}.{f}", st.sampled_from(SECTION_NAMES), st.sampled_from(FIELD_NAMES)),
    st.text(max_size=20),
)
override_values = st.one_of(
    st.text(max_size=30),
    scalars.map(str),
    values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
    st.sampled_from(["nan", ".nan", "inf", "-.inf", "null", "[", "{a: 1", "&a [*a]", "!!python/object:os.system",
                     "1e999", "[1, [2, [3]]]", "0x10", "1_000", "yes", "~"]),
)
overrides = st.lists(st.one_of(st.builds(lambda k, v: f"{k}={v}", keys, override_values), st.text(max_size=30)),
                     max_size=5)


@SETTINGS
@given(overrides)
def test_any_overrides_give_a_config_or_a_config_error(items):
    _loads_or_refuses(lambda: load_config(None, items))


RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(RECIPES), overrides)
def test_overrides_on_a_shipped_recipe(path, items):
    _loads_or_refuses(lambda: load_config(path, items))
