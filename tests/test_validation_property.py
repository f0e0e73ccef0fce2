"""Property: whatever value a user gives any field of the schema, validation (compose + typed checks, no model
or data) either passes with the value unchanged in the typed config, or stops with one line naming the key.

The fields are discovered from the dataclasses (config.RunConfig and every quant method's Config), so a field
added later is drawn too; values are drawn by type (numbers of every sign and size, NaN and infinities, null,
wrong types, the declared choices and strings that are none of them). Three tests:
- 1-3 random fields at a time through `validate_overrides`, the validation entry of the CLI;
- every field on its own, applying the drawn override to the composed defaults with the function Hydra's
  compose applies value overrides with (a full compose per draw would take minutes for all fields);
- a few random draws through `python -m ragqa_exp --validate`, which must agree with the in-process outcome."""
from __future__ import annotations

import dataclasses
import enum
import re
import string
import subprocess
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import copy
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from ragqa_exp.cli import is_user_error
from ragqa_exp.config import RunConfig, as_run_config
from ragqa_exp.config_store import compose, register_configs, validate_overrides
from ragqa_exp.errors import choices_of, one_line
from ragqa_exp.quantize import methods

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SchemaField:
    key: str  # dotted, as on the command line
    type: Any  # the field's type without Optional
    optional: bool
    choices: tuple | None  # declared with errors.choice(...)
    group: tuple[str, ...]  # group overrides that select the schema holding it (quant=<method>)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _walk(cls: type, prefix: str, group: tuple[str, ...], out: list[SchemaField]) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        tp, optional = _unwrap_optional(hints[f.name])
        if cls is RunConfig and f.name == "quant":  # the one node whose schema the group chooses
            for name, module in methods().items():
                _walk(module.Config, "quant.", (f"quant={name}",), out)
        elif dataclasses.is_dataclass(tp):
            _walk(tp, key + ".", group, out)
        else:
            choices = choices_of(f)
            out.append(SchemaField(key, tp, optional, tuple(choices) if choices is not None else None, group))


def schema_fields() -> list[SchemaField]:
    register_configs()  # the choices known only once registered (eval.backend: the backend names)
    out: list[SchemaField] = []
    _walk(RunConfig, "", (), out)
    return out


FIELDS = schema_fields()
CHOICES: dict[str, tuple] = {}  # a key's declared choices, over every quant method (read for an `auto` only)
for _f in FIELDS:
    CHOICES[_f.key] = CHOICES.get(_f.key, ()) + (_f.choices or ())

_junk = st.text(alphabet=string.ascii_letters + string.digits + "_-./", max_size=12)
# The words a bool option reads (OmegaConf's): any other word is an error. Numbers are left out of the draws:
# OmegaConf reads any integer as a bool (0 false, else true), a conversion ragqa_exp does not see.
BOOL_WORDS = {"true": True, "yes": True, "y": True, "on": True, "false": False, "no": False, "n": False, "off": False}


def _values(field: SchemaField) -> st.SearchStrategy:
    """Valid and invalid values for one field, as Python values (formatted into overrides by `_override`)."""
    tp = field.type
    if tp is bool:
        s = st.one_of(st.booleans(), st.sampled_from(sorted(BOOL_WORDS)), st.text(string.ascii_letters, max_size=6))
    elif tp is int:
        s = st.one_of(st.sampled_from([-1, 0, 1]), st.integers(-3, 300), st.integers(-(2**70), 2**70), st.floats(-5, 5))
    elif tp is float:
        s = st.one_of(st.floats(-2, 300), st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 300),
                      st.sampled_from([0.0, 1.0]), _junk)
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        s = st.one_of(st.sampled_from([m.value for m in tp]), _junk)
    elif tp is str:
        s = _junk
    elif typing.get_origin(tp) in (list, typing.List):
        s = st.lists(_junk, max_size=3)
    else:
        raise AssertionError(f"no strategy for {field.key}: {tp!r}; add one to tests/test_validation_property.py")
    if field.choices:
        s = st.one_of(st.sampled_from(field.choices), s)
    if field.optional:
        s = st.one_of(st.none(), s)
    return s


def _format(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(_format(v) for v in value) + "]"
    return f"'{value}'"


def _override(key: str, value: Any) -> str:
    return f"{key}={_format(value)}"


def _typed(cfg: RunConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _same(typed: Any, drawn: Any, choices: tuple | None = None) -> bool:
    """The typed config holds the drawn value as written (type conversions of the schema only: an enum by its
    value, a bool word as that bool, an int or a quoted number given to a float field as that float; a choice
    `auto` may be resolved to another of its choices)."""
    if choices and drawn == "auto" and "auto" in choices:
        return typed in choices
    if isinstance(typed, enum.Enum):
        return typed.value == drawn
    if isinstance(typed, bool) or isinstance(drawn, bool):
        return typed is (BOOL_WORDS.get(drawn.lower()) if isinstance(drawn, str) else drawn)
    if isinstance(typed, float):
        try:
            return float(drawn) == typed
        except ValueError:
            return False
    if isinstance(typed, int):
        return isinstance(drawn, int) and typed == drawn
    if isinstance(typed, list):
        return list(typed) == list(drawn)
    return typed == drawn


def _names(key: str, line: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(key)}(?![\w])", line) is not None


@st.composite
def draws(draw) -> tuple[list[str], dict[str, Any]]:
    """1-3 fields of one schema (one quant method), each with a drawn value; the overrides that set them."""
    group = draw(st.sampled_from(sorted({f.group for f in FIELDS if f.group})))
    pool = [f for f in FIELDS if f.group in ((), group)]
    chosen = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique_by=lambda f: f.key))
    values = {f.key: draw(_values(f)) for f in chosen}
    return [*group, *(_override(k, v) for k, v in values.items())], values


@lru_cache(maxsize=None)
def _defaults(group: tuple[str, ...]):
    return compose(group)


def validate_values(group: tuple[str, ...], overrides: list[str]) -> RunConfig:
    """validate_overrides(group + overrides) for value overrides, without composing again: the overrides are
    parsed and applied to the composed defaults by Hydra's own functions, then checked (as_run_config)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = copy.deepcopy(_defaults(group))
    ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(overrides), cfg)
    return as_run_config(cfg)


def outcome(overrides: list[str], values: dict[str, Any], validate=validate_overrides) -> str | None:
    """None when the overrides validate (after asserting every value arrived unchanged), else the one line."""
    try:
        cfg = validate(overrides)
    except Exception as ex:  # noqa: BLE001  the property is about which exceptions come out
        assert is_user_error(ex), f"{overrides}: {type(ex).__name__} would print a traceback: {ex}"
        line = one_line(ex)
        assert "\n" not in line, f"{overrides}: more than one line: {line!r}"
        assert any(_names(k, line) for k in values), f"{overrides}: the error names none of {list(values)}: {line}"
        return line
    for key, drawn in values.items():
        typed = _typed(cfg, key)
        assert _same(typed, drawn, CHOICES.get(key)), f"{overrides}: {key}={drawn!r} passed but the typed config holds {typed!r}"
    return None


def test_every_schema_field_is_discovered():
    """The discovery walks every dataclass of the schema, nested ones and each quant method's."""
    keys = {f.key for f in FIELDS}
    for expected in ("seed", "cache_dir", "model.init.num_key_value_heads", "eval.batch_size", "neftune.alpha",
                     "quant.group_size", "quant.double_quant", "quant.method", "wandb.mode"):
        assert expected in keys
    assert {f.group for f in FIELDS if f.group} == {(f"quant={m}",) for m in methods()}
    for f in FIELDS:
        _values(f)  # every field type has a strategy


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(draws())
def test_any_values_pass_unchanged_or_fail_with_one_line_naming_a_key(drawn):
    overrides, values = drawn
    event("passes" if outcome(overrides, values) is None else "fails")


@pytest.mark.parametrize("field", FIELDS, ids=[f"{' '.join(f.group)} {f.key}".strip() for f in FIELDS])
@settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_field_passes_unchanged_or_fails_with_one_line_naming_it(field, data):
    value = data.draw(_values(field), label=field.key)
    outcome([_override(field.key, value)], {field.key: value},
            validate=lambda overrides: validate_values(field.group, overrides))


@settings(max_examples=3, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(draws())
def test_the_cli_validates_the_same_way(tmp_path_factory, drawn):
    """`python -m ragqa_exp --validate ...` gives the in-process outcome: exit 0, or exit 2 with that one line."""
    overrides, values = drawn
    expected = outcome(overrides, values)
    r = subprocess.run([sys.executable, "-m", "ragqa_exp", "--validate", *overrides], capture_output=True, text=True,
                       cwd=tmp_path_factory.mktemp("cli"), timeout=300)
    assert "Traceback" not in r.stderr + r.stdout
    if expected is None:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 2 and r.stderr.splitlines() == [f"error: {expected}"], r.stderr
