"""Stage configs: frozen dataclasses documented field by field.

Each field is declared with `option(default, "help text")`; the help text becomes
the CLI's `--help`. A config can also come from a YAML/JSON file (`--config`),
with flags given on the command line taking precedence. `config_to_dict` adds the
package version when a config is saved beside a stage's output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import numbers
import os
import types
import typing
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from saescope._version import __version__
from saescope.errors import SaescopeError

T = TypeVar("T")


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with a help text (and optional choices) for the CLI."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) of a field annotation such as `int | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one `--flag` per field of the dataclass `cls`, plus `--config FILE`."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML or JSON file with any of the options below; flags override it.",
    )
    hints = typing.get_type_hints(cls)
    own, inherited = _own_fields_first(cls)
    target: Any = parser
    for f in own + inherited:
        if f is (inherited[0] if inherited else None):
            base = cls.__mro__[1]
            target = parser.add_argument_group(_title(base))
        if f.metadata.get("positional"):
            continue
        tp, optional = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        helptext = f.metadata.get("help", "")
        if "default" not in helptext:  # "(default: the store's model)" says it already
            default = field_default(f)
            helptext += " (default: unset)" if default is None else f" (default: {default!r})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": helptext}
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        origin = typing.get_origin(tp)
        if tp is bool:
            kw.update(type=_parse_bool, nargs="?", const=True, metavar="BOOL")
        elif origin in (list, tuple):
            inner = typing.get_args(tp)[0]
            kw.update(type=inner, nargs="+")
        elif tp in (int, float, str):
            kw.update(type=tp)
        else:
            kw.update(type=str)
        target.add_argument(flag, **kw)
    _ = optional


def _own_fields_first(cls: type) -> tuple[list[dataclasses.Field], list[dataclasses.Field]]:
    """The fields `cls` declares itself, then those it inherits (a dataclass lists the
    inherited ones first, which put e.g. every architecture's options above `--run` in
    `saescope train --help`)."""
    mine = set(cls.__dict__.get("__annotations__", {}))
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return [f for f in fields if f.name in mine], [f for f in fields if f.name not in mine]


def _title(base: type) -> str:
    """A help-group title for the options inherited from `base`: its docstring's first line."""
    doc = (base.__doc__ or "").strip()
    if not doc or doc.startswith(base.__name__ + "("):  # dataclass's generated signature
        return f"{base.__name__} options"
    return doc.splitlines()[0].rstrip(".")


def load_config_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise SaescopeError(f"config file {p} does not exist")
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SaescopeError(f"cannot read config file {p}: {exc}") from exc
    if not isinstance(data, dict):
        raise SaescopeError(f"config file {p} must hold a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_config(cls: type[T], values: dict[str, Any]) -> T:
    """Make a `cls` from a dict, rejecting unknown keys with a clear message."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise SaescopeError(
            f"unknown option(s) for {cls.__name__}: {', '.join(unknown)}; "
            f"known: {', '.join(sorted(names))}"
        )
    hints = typing.get_type_hints(cls)
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    fixed = {k: coerce(k, hints[k], v, choices.get(k)) for k, v in values.items()}
    try:
        return cls(**fixed)
    except (TypeError, ValueError) as exc:
        raise SaescopeError(f"invalid {cls.__name__}: {exc}") from exc


def coerce(name: str, annotation: Any, value: Any, choices: tuple[str, ...] | None = None) -> Any:
    """`value` (from a config file, or already typed by the command line) as the field's
    type: "1e-3" -> 0.001 for a float (YAML reads 1e-3 as a string), "false" -> False, 3.0
    -> 3 for an int, 0 / 1 -> a bool, one value -> a one-value list, YAML's off / on
    (booleans) -> "off" / "on" for a choice that has them; anything else is refused
    naming the option, rather than reaching the stage as a string that compares wrongly."""
    tp, optional = _base_type(annotation)
    if value is None:
        if optional:
            return None
        raise SaescopeError(f"option {name}: a value is needed, got nothing (null)")
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        inner = typing.get_args(tp)[0]
        many = isinstance(value, Iterable) and not isinstance(value, str | bytes)
        items = list(value) if many else [value]  # a numpy array or a range is its items
        out = [_scalar(name, inner, v, choices) for v in items]
        return tuple(out) if origin is tuple else out
    return _scalar(name, tp, value, choices)


def _is_bool(value: Any) -> bool:
    """A Python or numpy bool (numpy is not imported: `--help` stays light)."""
    return isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b"


def _scalar(name: str, tp: Any, value: Any, choices: tuple[str, ...] | None = None) -> Any:
    def bad(expected: str) -> SaescopeError:
        return SaescopeError(f"option {name}: expected {expected}, got {value!r}")

    if tp is bool:
        if _is_bool(value):
            return bool(value)
        if isinstance(value, numbers.Integral) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            try:
                return _parse_bool(value)
            except argparse.ArgumentTypeError:
                raise bad("true or false") from None
        raise bad("true or false")
    if tp is int:
        if _is_bool(value):
            raise bad("a whole number")
        if isinstance(value, numbers.Integral):  # numpy's integers too
            return int(value)
        try:
            number = float(value) if isinstance(value, str | numbers.Real) else None
        except ValueError:
            number = None
        if number is None or not number.is_integer():
            raise bad("a whole number")
        return int(number)
    if tp is float:
        if _is_bool(value) or not isinstance(value, numbers.Real | str):
            raise bad("a number")
        try:
            return float(value)
        except ValueError:
            raise bad("a number") from None
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):  # a run or a file given as a Path
            return os.fspath(value)
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans
            said = [w for w in (("on", "yes", "true") if value else ("off", "no", "false"))
                    if w in (choices or ())]  # fmt: skip
            if said:
                return said[0]
            raise bad("a string")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise bad("a string")
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def check_fields(cfg: Any) -> None:
    """Every field of the frozen config `cfg` as its declared type (`coerce`: 64 -> [64] for
    a list, "1e-3" -> 0.001 for a float) and within its choices, or a `SaescopeError` naming
    the option; a seed (`seed`, `*_seed`) must lie in [0, 2**32). Each config's
    `__post_init__` calls it first, so a config made in Python is held to what the command
    line and `--config` files are."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        fixed = coerce(f.name, hints[f.name], value, choices)
        if choices:
            bad = [v for v in (fixed if isinstance(fixed, list | tuple) else [fixed])
                   if v is not None and v not in choices]  # fmt: skip
            if bad:
                raise SaescopeError(
                    f"unknown {f.name} {bad[0]!r}; choose one of {', '.join(map(str, choices))}"
                )
        seed = f.name == "seed" or f.name.endswith("_seed")
        if seed and fixed is not None and not 0 <= fixed < 2**32:
            # numpy and torch take seeds in [0, 2**32): a negative one was a traceback
            raise SaescopeError(f"{f.name} must lie in [0, 2**32), got {fixed}")
        if fixed is not value:
            object.__setattr__(cfg, f.name, fixed)


def field_default(f: dataclasses.Field) -> Any:
    """The default value of a config field (a fresh one for list and dict options);
    dataclasses.MISSING when it has none."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def changed_options(cfg: Any, names: Collection[str]) -> list[str]:
    """The options among `names` that `cfg` sets away from their defaults, in field order."""
    return [
        f.name
        for f in dataclasses.fields(cfg)
        if f.name in names and getattr(cfg, f.name) != field_default(f)
    ]


def refuse_unread(cfg: Any, names: Collection[str], by: str) -> None:
    """Refuse an option among `names` set away from its default: `by` ("--method thesis")
    does not read it, and the run would go on without it as if it had."""
    changed = changed_options(cfg, names)
    if changed:
        name = changed[0]
        default = field_default(next(f for f in dataclasses.fields(cfg) if f.name == name))
        raise SaescopeError(
            f"--{name.replace('_', '-')} is not read by {by}; leave it at its default {default!r}"
        )


def check_ranges(cfg: Any, ranges: Mapping[str, tuple[float, float, str]]) -> None:
    """Refuse a numeric option of `cfg` outside its (lowest, highest, what it may be) in
    `ranges`, or NaN: "{name} must be {what}, got {value}". Unset (None) options pass."""
    for name, (low, high, what) in ranges.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        if not (low <= float(value) <= high and math.isfinite(float(value))):
            raise SaescopeError(f"{name} must be {what}, got {value}")


def config_from_args(cls: type[T], ns: argparse.Namespace) -> T:
    """Merge `--config FILE` (if given) with explicit flags into a `cls`."""
    values: dict[str, Any] = {}
    if getattr(ns, "config", None):
        values.update(load_config_file(ns.config))
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values.update({k: v for k, v in vars(ns).items() if k in names})
    return build_config(cls, values)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config, with the package version."""
    out = dataclasses.asdict(cfg)
    out["saescope_version"] = __version__
    return out
