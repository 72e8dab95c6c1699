"""Reading a config: YAML (safe loader, no duplicate keys), ``key=value`` overrides, and building the frozen
dataclasses with every key and type checked (unknown keys suggest the closest one)."""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from synth.config.checks import validate
from synth.config.schema import Config, ConfigError
from synth.messages import show


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _type_name(tp: Any) -> str:
    """How a message names the annotation ``tp`` (``a string or null``, not ``str or NoneType``)."""
    if tp in _TYPE_WORDS:
        return _TYPE_WORDS[tp]
    if typing.get_origin(tp) is list:
        return "a list"
    if typing.get_origin(tp) is dict:
        return "a mapping"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class _BadNumber(ConfigError):
    """A number that is not usable (infinite, NaN, too large): never retried as another type of a union."""


def _finite_float(value: Any, key: str) -> float:
    """``value`` as a finite float: NaN and infinities pass every ``x <= 0`` check, so refuse them here."""
    try:
        out = float(value)
    except OverflowError:  # an int with hundreds of digits
        raise _BadNumber(f"{key}: {show(value)} is too large for a number; use a finite value") from None
    if not math.isfinite(out):
        raise _BadNumber(f"{key}: expected a finite number, got {show(value)}")
    return out


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return the converted value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except _BadNumber:
                raise  # the right type, a bad value: "expected a number or null, got nan" would mislead
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {show(value)}")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {show(value)}")
        return _build(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {show(value)}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {show(value)}")
        _, vt = typing.get_args(tp) or (Any, Any)
        for k in value:
            # str(k) would silently turn `yes:` into 'True' and `null:` into 'None'
            if not isinstance(k, str):
                raise ConfigError(f"{key}: key {show(k)} is not a string (YAML reads bare numbers, yes/no and null "
                                  f"as other types); quote it")
        return {k: _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite_float(value, key)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                float(value)
            except ValueError:
                pass
            else:
                return _finite_float(value, key)
        raise ConfigError(f"{key}: expected a number, got {show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if value is False and key.endswith("mixed_precision"):  # YAML 1.1 reads a bare `no` as false
            return "no"
        # `--set labels.prompt_template={label}` reads as a YAML mapping: say how to pass text
        how = ("quote each item, e.g. ['yes', '1']" if key.endswith("]") else
               f"quote the text: --set \"{key}='...'\" or {key.split('.')[-1]}: '...' in the file")
        raise ConfigError(f"{key}: expected a string, got {show(value)}; YAML read it as another type, so {how}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    """``cls(**values)`` with every key checked against the dataclass fields and every value coerced."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            shown = k if isinstance(k, str) and len(k) <= 80 else show(k)
            raise ConfigError(f"unknown config key '{prefix}{shown}'{hint}")
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    return cls(**kwargs)


def config_from_dict(values: dict | None) -> Config:
    """Build a validated :class:`Config` from nested plain values."""
    return _build(Config, values or {})


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_path(d: dict, dotted: str, value: Any) -> None:
    """``d[a][b][c] = value`` for ``a.b.c``; mappings on the way are copied, never mutated in place.

    Copying only the path (not the whole tree) keeps the caller's data intact and works for
    any YAML value (dates, bytes, self-referencing aliases) that a JSON round trip refuses.
    """
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = d.get(p)
        node = dict(node) if isinstance(node, dict) else {}
        d[p] = node
        d = node
    d[parts[-1]] = value


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags) that also refuses duplicate keys.

    Plain YAML keeps the last of two ``train:`` sections and silently drops the first.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # non-scalar keys: the base class refuses the unhashable ones
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {show(key)}; keep one and merge their values", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(e: Exception) -> str:
    """The one useful line of a YAML error: the problem and where, not PyYAML's multi-line context."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark or e.context_mark
        return e.problem + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else "")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


class _NotYAML(ConfigError):
    """Text the YAML reader rejects or cannot convert (an override then takes it as plain text)."""


def parse_yaml(text: str, what: str) -> Any:
    """``text`` read with the safe loader; any failure is a one-line ConfigError about ``what``."""
    try:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass: safe loading only
    except yaml.YAMLError as e:
        raise _NotYAML(f"{what} is not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply to read; flatten it") from None
    except ValueError as e:  # a date like 2024-13-45, an integer past Python's 4300-digit limit
        reason = str(e).split(";")[0].strip() or type(e).__name__
        raise _NotYAML(f"{what} has a value YAML cannot convert ({reason[:120]}); quote it if it is text") from None


def parse_override(item: str) -> tuple[str, Any]:
    """Parse ``a.b=value``; the value is read as YAML (``1e-4``, ``[1,2]``, ``null``).

    A value YAML rejects (``chest x-ray: {label}``, a ``!!python`` tag) is taken as plain text.
    """
    if "=" not in item:
        raise ConfigError(f"override {show(item)} is not of the form key=value (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {show(item)} has an empty key; use e.g. train.lr=1e-4")
    if not raw.strip():
        return key, ""
    try:
        return key, parse_yaml(raw, f"override {show(item)}")
    except _NotYAML:
        return key, raw


def merge_overrides(values: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """``values`` with every ``key=value`` override applied in order (``values`` itself is left as it was)."""
    out = dict(values)
    for item in overrides:
        key, value = parse_override(item)
        _set_path(out, key, value)
    return out


def read_yaml(path: str | Path) -> dict:
    """The mapping in the YAML file ``path`` (empty for an empty file); one-line errors otherwise."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file '{p}' not found; pass an existing YAML file (see configs/)")
    if p.is_dir():
        raise ConfigError(f"config '{p}' is a directory; pass a YAML file (see configs/)")
    if not p.is_file():
        raise ConfigError(f"config '{p}' is not a regular file; pass a YAML file (see configs/)")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file '{p}' cannot be read ({e.strerror or e}); check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{p}' is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
                          f"save it as UTF-8") from None
    data = parse_yaml(text, f"config file '{p}'")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping at the top level (e.g. 'train: {{steps: 100}}'), "
                          f"not a {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML preset (or defaults when ``path`` is None) and apply overrides."""
    # `is not None`: an empty --config "" must not silently mean "defaults"
    values = read_yaml(path) if path is not None else {}
    values = merge_overrides(values, list(overrides))
    cfg = config_from_dict(values)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: str | Path) -> None:
    from synth.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def diff_configs(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_configs(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out
