"""Typed loading, merging and saving of nested ``@dataclass`` configs.

The project's configs are plain nested dataclasses (``TrainConfig(model=ModelConfig(encoder=...), ...)``). A run's
config is built in three layers, each applied on top of the previous one:

1. a *preset*: a Python function returning a config instance;
2. an optional YAML file with a (possibly partial, nested) mapping;
3. dotted command-line overrides such as ``optim.lr=1e-3``.

Every value is checked against the field's annotation and coerced where that is unambiguous (``3.0`` for an int
field, ``"1e-3"`` for a float field, ``"32,64"`` for a tuple field). Mistakes fail loudly with the full dotted path:
an unknown key lists the valid keys at that level and suggests the closest one, a type error names the expected type
and the value received. After a config is assembled, every (nested) dataclass that defines ``validate()`` has it
called once, children before parents, so configs can check cross-field constraints.

Example::

    from training.config_io import apply_overrides, config_hash, load_yaml, merge, save_yaml

    cfg = small_preset()                                   # any dataclass instance
    cfg = merge(cfg, load_yaml("configs/moving_mnist.yaml"))   # YAML values on top of the preset's
    cfg = apply_overrides(cfg, ["optim.lr=1e-3", "model.encoder.channels=32,64,128"])
    save_yaml(cfg, f"runs/{config_hash(cfg)}/config.yaml")

or all at once with ``resolve_config(small_preset(), yaml_path=..., overrides=[...])``.

Only the standard library is needed, except for the YAML functions (and parsing of list/mapping-valued overrides),
which import PyYAML lazily.
"""

from __future__ import annotations

import collections.abc
import copy
import dataclasses
import difflib
import enum
import functools
import hashlib
import json
import os
import tempfile
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

__all__ = [
    "ConfigError",
    "apply_overrides",
    "config_hash",
    "from_dict",
    "load_yaml",
    "merge",
    "resolve_config",
    "save_json",
    "save_yaml",
    "to_dict",
]

T = TypeVar("T")

_NONE_STRINGS = frozenset({"none", "null", "~"})
_TRUE_STRINGS = frozenset({"true", "1"})
_FALSE_STRINGS = frozenset({"false", "0"})
_NoneType = type(None)


class ConfigError(ValueError):
    """A config value, key, file or override is invalid. The message names the dotted path or file involved."""


class _CliValue(str):
    """Raw text of a command-line override value.

    Kept as a marker subclass of ``str`` (rather than parsing the text immediately) because the right
    interpretation depends on the target field: a ``str`` field must keep ``"123"`` as text, while a list field
    should read ``"[1, 2]"`` as YAML. Coercion decides once it knows the field type.
    """


# ---------------------------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> dict[str, Any]:
    """Convert a dataclass instance to plain nested dicts/lists/scalars (tuples become lists, enums their values).

    Only ``init=True`` fields are included: those are exactly the keys ``from_dict`` accepts, so
    ``from_dict(type(cfg), to_dict(cfg)) == cfg`` holds (derived ``init=False`` fields are recomputed).
    """
    if not _is_dataclass_instance(cfg):
        raise ConfigError(f"to_dict expects a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


def from_dict(cls: type[T], data: Mapping[str, Any], *, path: str = "") -> T:
    """Build ``cls`` from a (possibly partial, nested) mapping; absent fields keep their defaults.

    ``path`` is a dotted prefix used in error messages (for building a sub-config of a larger one).
    Calls ``validate()`` on the result (and nested configs) once it is complete.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"from_dict expects a dataclass type, got {cls!r}")
    cfg = _build(cls, data, path, None)
    _validate_tree(cfg, path)
    return cfg


def merge(cfg: T, data: Mapping[str, Any]) -> T:
    """Return a new config: ``data``'s values applied on top of ``cfg``'s current values (not the class defaults).

    Nested mappings update nested configs field by field; any other value (lists included) replaces the field.
    ``cfg`` itself is not modified.
    """
    _require_instance(cfg, "merge")
    merged = _build(type(cfg), data, "", cfg)
    _validate_tree(merged, "")
    return merged


def apply_overrides(cfg: T, overrides: Iterable[str]) -> T:
    """Return a new config with dotted ``KEY=VALUE`` overrides applied in order (later ones win).

    The value text is interpreted according to the field's type: ``lr=1e-3`` is a float, ``flag=true`` a bool,
    ``sizes=1,2,3`` or ``sizes=[1,2,3]`` a tuple/list, ``x=none`` None for an Optional field, and a ``str`` field
    keeps the text as is (``name=123`` is the string ``"123"``). ``section={a: 1}`` merges a YAML mapping into a
    nested config.
    """
    _require_instance(cfg, "apply_overrides")
    if isinstance(overrides, str):
        # A bare string would otherwise be iterated character by character.
        raise ConfigError(f"apply_overrides expects a list of 'KEY=VALUE' strings, got the string {overrides!r}")
    # Overrides are merged into one nested mapping and built at once, so a config whose __post_init__ checks
    # its own fields (BallsConfig: max_balls >= min_balls) never sees a half-applied state such as
    # `data.balls.min_balls=4 data.balls.max_balls=6` against a preset's max_balls=2. Only when a later override
    # reaches into a value an earlier one set whole (`model.encoder={width: 7}` then `model.encoder.width=8`) is
    # the pending group built first, which keeps "in order, later ones win". The `validate()` methods run once at
    # the end either way.
    result, pending = cfg, {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"Invalid override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not part.strip() for part in parts):
            raise ConfigError(f"Invalid override {item!r}: the key must be a dotted path such as model.encoder.dim")
        parts = [part.strip() for part in parts]
        try:
            _check_override_path(result, parts)
        except ConfigError:
            if not pending:
                raise
            # The path may exist only once the pending overrides are applied (a section set whole first).
            result, pending = _build(type(result), pending, "", result), {}
            _check_override_path(result, parts)
        if not _merge_override(pending, parts, _CliValue(raw)):
            result, pending = _build(type(result), pending, "", result), {}
            _merge_override(pending, parts, _CliValue(raw))
    if pending:
        result = _build(type(result), pending, "", result)
    _validate_tree(result, "")
    return result


def _merge_override(pending: dict[str, Any], parts: list[str], value: Any) -> bool:
    """Put value at the dotted path parts of the nested mapping pending. False (pending unchanged) when the path
    runs through a value that an earlier override set whole, or would replace a group of earlier ones: the two
    must then be applied one after the other."""
    node: Any = pending
    for part in parts[:-1]:
        node = node.get(part, {})
        if not isinstance(node, dict):
            return False
    if isinstance(node.get(parts[-1]), dict):
        return False
    node = pending
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return True


def resolve_config(
    base: T, *, yaml_path: str | os.PathLike[str] | None = None, overrides: Iterable[str] = ()
) -> T:
    """Preset -> YAML file -> CLI overrides, validated once at the end. Returns a new config."""
    _require_instance(base, "resolve_config")
    cfg = base
    if yaml_path is not None:
        cfg = _build(type(cfg), load_yaml(yaml_path), "", cfg)
    overrides = list(overrides)
    # apply_overrides validates; without overrides, validate here so every path through this function validates.
    if overrides:
        return apply_overrides(cfg, overrides)
    if cfg is base:
        cfg = copy.deepcopy(base)
    _validate_tree(cfg, "")
    return cfg


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping from ``path``. An empty file gives ``{}``; errors name the file (and line)."""
    yaml = _import_yaml("load_yaml")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc}") from exc
    try:
        data = yaml.load(text, Loader=_strict_loader(yaml))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(path)
        detail = "; ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"Invalid YAML in {where}: {detail or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"Invalid YAML in {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {path} must contain a mapping at the top level (key: value lines), "
            f"got {type(data).__name__}"
        )
    return data


def save_yaml(cfg: Any, path: str | os.PathLike[str]) -> None:
    """Write ``to_dict(cfg)`` as YAML, atomically (a reader never sees a half-written file). Keeps field order."""
    yaml = _import_yaml("save_yaml")
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)
    atomic_write_text(Path(path), text)


def save_json(cfg: Any, path: str | os.PathLike[str]) -> None:
    """Write ``to_dict(cfg)`` as indented JSON, atomically. Keeps field order."""
    atomic_write_text(Path(path), json.dumps(to_dict(cfg), indent=2, ensure_ascii=False) + "\n")


def config_hash(cfg: Any, length: int = 12) -> str:
    """Short, stable hex digest of the config's canonical JSON (sorted keys, compact separators).

    Stable across processes and field declaration order; changes whenever any value changes. Values are already
    normalised by coercion (an int field always holds an int), so equal configs always hash equally.
    """
    canonical = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:length]


# ---------------------------------------------------------------------------------------------------------------------
# Building dataclasses
# ---------------------------------------------------------------------------------------------------------------------


def _build(cls: type[T], data: Any, path: str, base: T | None) -> T:
    """Construct ``cls`` from ``data``; fields absent from ``data`` come from ``base`` if given, else defaults."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(path)}: expected a mapping for {cls.__name__}, got {_describe(data)}")
    hints = _type_hints(cls)
    init_fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    # Check every key before coercing anything so a typo is reported as such rather than as a later type error.
    for key in data:
        if not isinstance(key, str) or key not in init_fields:
            raise _unknown_key(key, path, list(init_fields))

    kwargs: dict[str, Any] = {}
    for name, fld in init_fields.items():
        sub_path = _join(path, name)
        tp = hints[name]
        if name in data:
            current = getattr(base, name) if base is not None else None
            kwargs[name] = _coerce(data[name], tp, sub_path, current)
        elif base is not None:
            # Deep copy so the new config never shares mutable state (lists, nested configs) with the old one.
            kwargs[name] = copy.deepcopy(getattr(base, name))
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            # A nested config without a declared default still has a natural one: its own defaults.
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                kwargs[name] = _build(tp, {}, sub_path, None)
            else:
                raise ConfigError(f"{sub_path}: required field is missing (expected {_type_name(tp)})")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        # __post_init__ checks: re-raise with the location, keeping ValueError compatibility via ConfigError.
        raise ConfigError(f"{_where(path)}: invalid {cls.__name__}: {exc}") from exc


def _check_override_path(cfg: Any, parts: list[str]) -> None:
    """Walk an override's dotted key so errors say which segment is wrong, before any value is coerced."""
    cls: type | None = type(cfg)
    prefix = ""
    for part in parts[:-1]:
        assert cls is not None
        init_names = [f.name for f in dataclasses.fields(cls) if f.init]
        if part not in init_names:
            raise _unknown_key(part, prefix, init_names)
        tp = _type_hints(cls)[part]
        prefix = _join(prefix, part)
        section = _section_class(tp)
        if section is None:
            raise ConfigError(
                f"Cannot set '{'.'.join(parts)}': '{prefix}' has type {_type_name(tp)}, it is not a config section"
                + (f"; set it whole instead, e.g. {prefix}={{key: value}}" if _is_mapping_type(tp) else "")
            )
        cls = section
    # The final segment is checked by _build with the same unknown-key message.


def _validate_tree(obj: Any, path: str) -> None:
    """Call ``validate()`` on every dataclass in the tree, children first, so parents may rely on valid children."""
    if _is_dataclass_instance(obj):
        for fld in dataclasses.fields(obj):
            _validate_tree(getattr(obj, fld.name), _join(path, fld.name))
        validate = getattr(obj, "validate", None)
        if callable(validate):
            try:
                validate()
            except Exception as exc:
                # Keep the exception type (callers may catch ValueError) but record where it came from.
                if hasattr(exc, "add_note"):
                    exc.add_note(f"raised by {type(obj).__name__}.validate() for config '{_where(path)}'")
                raise
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            _validate_tree(item, f"{path}[{i}]")
    elif isinstance(obj, Mapping):
        for key, item in obj.items():
            _validate_tree(item, _join(path, str(key)))


# ---------------------------------------------------------------------------------------------------------------------
# Coercion of one value to an annotated type
# ---------------------------------------------------------------------------------------------------------------------


def _coerce(value: Any, tp: Any, path: str, current: Any = None) -> Any:
    """Check/convert ``value`` to type ``tp``; ``current`` is the field's present value (for nested merging)."""
    if tp is Any or tp is object:
        return _parse_cli(value) if isinstance(value, _CliValue) else value
    origin = get_origin(tp)
    args = get_args(tp)

    if origin is Literal:
        return _coerce_literal(value, args, path)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return _coerce_union(value, tp, args, path, current)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _coerce_dataclass(value, tp, path, current)
    if tp is bool:
        return _coerce_bool(value, path)
    if tp is int:
        return _coerce_int(value, path)
    if tp is float:
        return _coerce_float(value, path)
    if tp is str:
        if isinstance(value, str):
            return str(value)  # str() also drops the _CliValue marker subclass
        raise _type_error(path, tp, value, hint="quote it in YAML to make it a string")
    if tp is _NoneType:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_STRINGS):
            return None
        raise _type_error(path, tp, value)
    if origin in (tuple, list, collections.abc.Sequence, collections.abc.MutableSequence) or tp in (tuple, list):
        return _coerce_sequence(value, tp, origin or tp, args, path)
    if _is_mapping_type(tp):
        return _coerce_mapping(value, tp, args, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _coerce_enum(value, tp, path)
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, (str, PurePath)):
            return tp(value)
        raise _type_error(path, tp, value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _type_error(path, tp, value)
    # An annotation this module does not understand (TypeVar, Callable, ...): accept the value unchecked rather
    # than refuse to load the config at all.
    return value


def _coerce_bool(value: Any, path: str) -> bool:
    if isinstance(value, bool):
        return value
    # 0/1 arrive as ints from YAML (``flag: 1``, or the override ``flag=1``); any other int is almost surely a mistake.
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE_STRINGS:
            return True
        if text in _FALSE_STRINGS:
            return False
    raise _type_error(path, bool, value, hint="use true or false")


def _coerce_int(value: Any, path: str) -> int:
    # bool is a subclass of int, but `epochs: true` is a mistake, not 1.
    if isinstance(value, bool):
        raise _type_error(path, int, value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise _type_error(path, int, value, hint="not an integer")
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            as_float = float(text)  # "1e3" is a fine way to write 1000
        except ValueError:
            as_float = None
        if as_float is not None and as_float.is_integer():
            return int(as_float)
    raise _type_error(path, int, value)


def _coerce_float(value: Any, path: str) -> float:
    if isinstance(value, bool):
        raise _type_error(path, float, value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        # PyYAML (YAML 1.1) reads `lr: 1e-3` as the *string* "1e-3" (its float syntax needs a dot), so numeric
        # strings must be accepted here or the most natural way to write a learning rate would fail.
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise _type_error(path, float, value)


def _coerce_literal(value: Any, options: tuple[Any, ...], path: str) -> Any:
    for option in options:
        if isinstance(option, bool) or isinstance(value, bool):
            # Keep True and 1 apart: Literal[1] must not accept True.
            if isinstance(option, bool) and isinstance(value, bool) and option == value:
                return option
            if isinstance(option, bool) and isinstance(value, str) and value.strip().lower() == str(option).lower():
                return option
            continue
        if isinstance(option, str):
            if isinstance(value, str) and str(value) == option:
                return option
            continue
        if value is option or (not isinstance(value, str) and value == option):
            return option
        # Non-string options given as text (from a CLI override or a comma-separated list).
        if isinstance(value, str) and value.strip() == str(option):
            return option
    listed = ", ".join(repr(o) for o in options)
    message = f"{_where(path)}: invalid value {_describe(value)}; expected one of: {listed}"
    if isinstance(value, str):
        close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.6)
        if close:
            message += f". Did you mean {close[0]!r}?"
    raise ConfigError(message)


def _coerce_union(value: Any, tp: Any, args: tuple[Any, ...], path: str, current: Any) -> Any:
    allows_none = _NoneType in args
    if value is None:
        if allows_none:
            return None
        raise _type_error(path, tp, value)
    if allows_none and isinstance(value, str) and value.strip().lower() in _NONE_STRINGS:
        return None
    arms = [arm for arm in args if arm is not _NoneType]
    if len(arms) == 1:  # Optional[X]: report X's own (more specific) error
        return _coerce(value, arms[0], path, current)
    for arm in arms:  # a general Union: first arm (in declaration order) that accepts the value wins
        try:
            return _coerce(value, arm, path, current)
        except ConfigError:
            continue
    raise _type_error(path, tp, value)


def _coerce_dataclass(value: Any, tp: type, path: str, current: Any) -> Any:
    if isinstance(value, tp):
        return copy.deepcopy(value)
    if isinstance(value, _CliValue):
        value = _parse_cli(value)
    if isinstance(value, Mapping):
        # Merge onto the current nested config when there is one, so a partial mapping only changes what it names.
        return _build(tp, value, path, current if isinstance(current, tp) else None)
    raise ConfigError(
        f"{_where(path)}: expected a mapping for config section {tp.__name__}, got {_describe(value)}"
    )


def _coerce_sequence(value: Any, tp: Any, container: Any, args: tuple[Any, ...], path: str) -> Any:
    if isinstance(value, _CliValue):
        parsed = _parse_cli(value)
        # "[1, 2]" parses as a YAML list; anything else ("1,2,3", or a single "32") is split on commas.
        items = list(parsed) if isinstance(parsed, list) else _split_list(value)
    elif isinstance(value, str):
        items = _split_list(value)
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise _type_error(path, tp, value, hint="use a list or a comma-separated string")

    if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        # Fixed-length tuple such as tuple[float, float].
        if len(items) != len(args):
            raise ConfigError(
                f"{_where(path)}: expected {_type_name(tp)} with {len(args)} items, got {len(items)}: {_describe(value)}"
            )
        return tuple(_coerce(item, arg, f"{path}[{i}]", None) for i, (item, arg) in enumerate(zip(items, args)))
    elem_tp = args[0] if args else Any
    coerced = [_coerce(item, elem_tp, f"{path}[{i}]", None) for i, item in enumerate(items)]
    if container is tuple or container is collections.abc.Sequence:
        return tuple(coerced)
    return coerced


def _coerce_mapping(value: Any, tp: Any, args: tuple[Any, ...], path: str) -> dict[Any, Any]:
    if isinstance(value, _CliValue):
        value = _parse_cli(value)
    if not isinstance(value, Mapping):
        raise _type_error(path, tp, value)
    key_tp, val_tp = args if len(args) == 2 else (Any, Any)
    return {
        _coerce(key, key_tp, _join(path, str(key)), None): _coerce(val, val_tp, _join(path, str(key)), None)
        for key, val in value.items()
    }


def _coerce_enum(value: Any, tp: type[enum.Enum], path: str) -> enum.Enum:
    if isinstance(value, tp):
        return value
    for member in tp:
        if member.value == value and not isinstance(value, bool):
            return member
        if isinstance(value, str) and value.strip() in (member.name, str(member.value)):
            return member
    listed = ", ".join(repr(m.value) for m in tp)
    raise ConfigError(f"{_where(path)}: invalid value {_describe(value)}; expected one of: {listed}")


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved field annotations (handles ``from __future__ import annotations`` string annotations)."""
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:  # NameError for an unresolvable forward reference, among others
        raise ConfigError(
            f"Cannot resolve the type annotations of {cls.__qualname__}: {exc}. Config classes must be defined at "
            "module level with importable annotation names."
        ) from exc


def _section_class(tp: Any) -> type | None:
    """The dataclass a field holds (``X`` or ``Optional[X]``), or None if the field is not a config section."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    origin = get_origin(tp)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        arms = [arm for arm in get_args(tp) if arm is not _NoneType]
        if len(arms) == 1:
            return _section_class(arms[0])
    return None


def _is_mapping_type(tp: Any) -> bool:
    origin = get_origin(tp) or tp
    return origin in (dict, collections.abc.Mapping, collections.abc.MutableMapping)


def _is_dataclass_instance(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def _require_instance(cfg: Any, func: str) -> None:
    if not _is_dataclass_instance(cfg):
        raise ConfigError(f"{func} expects a dataclass config instance, got {type(cfg).__name__}")


def _plain(value: Any) -> Any:
    if _is_dataclass_instance(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, PurePath):
        return str(value)
    return value


def _parse_cli(raw: str) -> Any:
    """Interpret override text as a YAML scalar/flow value; text that is not valid YAML stays a string."""
    yaml = _import_yaml("parsing list/mapping override values")
    try:
        return yaml.safe_load(str(raw))
    except yaml.YAMLError:
        return str(raw)


def _split_list(text: str) -> list[str]:
    """Split "32,64,128" (optionally wrapped in [] or ()) into item strings."""
    text = text.strip()
    if len(text) >= 2 and (text[0], text[-1]) in (("[", "]"), ("(", ")")):
        text = text[1:-1].strip()
    if not text:
        return []
    items = [item.strip() for item in text.split(",")]
    if items[-1] == "":  # tolerate a trailing comma ("32," is a one-item tuple, as in Python)
        items.pop()
    return items


def _unknown_key(key: Any, path: str, valid: list[str]) -> ConfigError:
    full = _join(path, str(key))
    message = f"Unknown config key '{full}'."
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    if close:
        message += f" Did you mean '{_join(path, close[0])}'?"
    level = f"'{path}'" if path else "the top level"
    message += f" Valid keys at {level}: {', '.join(valid) if valid else '(none)'}."
    return ConfigError(message)


def _type_error(path: str, tp: Any, value: Any, hint: str = "") -> ConfigError:
    message = f"{_where(path)}: expected {_type_name(tp)}, got {_describe(value)}"
    return ConfigError(f"{message} ({hint})" if hint else message)


def _type_name(tp: Any) -> str:
    if tp is _NoneType:
        return "None"
    if isinstance(tp, type) and not get_args(tp):
        return tp.__name__
    return repr(tp).replace("typing.", "")


def _describe(value: Any) -> str:
    if isinstance(value, _CliValue):
        value = str(value)
    return f"{value!r} ({type(value).__name__})"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _where(path: str) -> str:
    return path or "<config>"


def _import_yaml(purpose: str) -> Any:
    try:
        import yaml
    except ImportError as exc:
        raise ImportError(f"PyYAML is required for {purpose}; install it with `pip install pyyaml`.") from exc
    return yaml


def _strict_loader(yaml: Any) -> type:
    """A SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one, hiding typos)."""

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # `<<: *anchor` merges are allowed to be overridden by explicit keys
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        duplicate = key in seen
                        seen.add(key)
                    except TypeError:  # unhashable key; the base constructor reports it properly
                        continue
                    if duplicate:
                        raise yaml.constructor.ConstructorError(
                            "while constructing a mapping",
                            node.start_mark,
                            f"found duplicate key {key!r}",
                            key_node.start_mark,
                        )
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same directory, fsync, then os.replace: readers see the old or new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a config file should be as readable as any other
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
