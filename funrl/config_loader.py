"""The generic config loader behind `funrl.config`: YAML file + dotted ``key=value`` overrides into nested frozen
dataclasses, and the dump back to YAML.

It walks ``dataclasses.fields`` and the type hints, so a new field needs no loader code. Override values are
parsed with ``yaml.safe_load`` and coerced to the field's type. YAML anchors and aliases are refused (file and
overrides): nested aliases expand exponentially ("billion laughs"). A YAML mapping given for a ``dict`` field
replaces the whole mapping; ``FIELD.NAME=W`` changes one entry and keeps the others. Errors name where a key was
set (``file:line`` or the override) and the closest known key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from funrl.data import write_text_atomic
from policy.config import ConfigError, build, dotted, field_types, type_name, unknown_key_error

__all__ = ["dump_config", "load_config", "save_config", "to_dict"]


def to_dict(obj: Any) -> Any:
    """Plain YAML-able data of a config (dataclasses -> dicts, tuples -> lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def dump_config(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True, default_flow_style=False)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write ``dump_config(cfg)`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, dump_config(cfg))


# ---------------------------------------------------------------- load


def load_config(path: str | None, overrides: list[str], root: type) -> Any:
    """Defaults <- YAML file ``path`` (any subset of keys) <- dotted ``overrides`` (``key=value``).

    ``root``: the top-level config dataclass (``funrl.config.TrainConfig``, ``funrl.sft_config.SftConfig``).
    """
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}  # dotted key -> where it was set, for error messages
    if path:
        raw, lines = _read_yaml(path, root)
        _check_tree(root, raw, "", lambda key: f"{path}:{lines.get(key, '?')}: ")
        origin.update({key: f"{path}:{line}" for key, line in lines.items()})
    for text in overrides:
        origin[_apply_override(raw, text, root)] = f"override {text!r}"
    try:
        return build(root, raw, "")
    except ConfigError as exc:
        where = _origin_of(exc.key, origin)
        if where is None:
            raise
        raise ConfigError(f"{exc} (set in {where})", key=exc.key) from None


def resumed_config(resume: str, overrides: list[str], root: type) -> Any:
    """``--resume OUT``: OUT/config.yaml with ``overrides``, trained in OUT whatever run.out_dir it holds (the saved
    one may be relative to the working directory of the run that wrote it); a run.out_dir override is an error."""
    if any(o.partition("=")[0].strip() == "run.out_dir" for o in overrides):
        raise ConfigError(
            f"--resume {resume} continues the run in {resume} with its own config.yaml: drop the run.out_dir "
            "override (to train elsewhere, copy the folder and resume the copy)",
            key="run.out_dir",
        )
    path = Path(resume) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume}: {path} does not exist (not a run folder?)")
    cfg = load_config(str(path), overrides, root)
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(resume)))


def _read_yaml(path: str, root: type) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's mapping and the 1-based line of every dotted key in it."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        node, data = _safe_load_no_alias(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{at}: invalid YAML: {problem}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a config file must be a mapping of sections "
            f"({', '.join(field_types(root))}), got {type(data).__name__}"
        )
    lines: dict[str, int] = {}
    _key_lines(node, "", lines)
    return data, lines


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors (``&a``) and aliases (``*a``): a config never needs them, and
    a few hundred bytes of nested aliases ("billion laughs") expand to billions of nodes for any
    code that walks the tree."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            kind = "alias" if isinstance(event, yaml.AliasEvent) else "anchor"
            sign = "*" if kind == "alias" else "&"
            raise yaml.composer.ComposerError(
                None,
                None,
                f"a YAML {kind} ({sign}{event.anchor}) is not allowed in a config: write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def _safe_load_no_alias(text: str) -> tuple[yaml.Node | None, Any]:
    """The document's node tree and its plain data (as ``yaml.safe_load``), refusing anchors and aliases."""
    loader = _NoAliasLoader(text)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def _key_lines(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        key = dotted(prefix, str(key_node.value))
        out[key] = key_node.start_mark.line + 1
        _key_lines(value_node, key, out)


def _section_type(hint: Any) -> type | None:
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _check_tree(cls: type, raw: dict[str, Any], prefix: str, where_of: Callable[[str], str]) -> None:
    """Unknown keys -> ConfigError naming where (file:line or override), the key and the closest one."""
    hints = field_types(cls)
    for name in list(raw):
        key = dotted(prefix, str(name))
        where = where_of(key)
        if name not in hints:
            raise unknown_key_error(prefix, str(name), list(hints), where=where)
        section = _section_type(hints[name])
        if section is None:
            continue
        if raw[name] is None:  # "learner:" with nothing under it
            raw[name] = {}
        if not isinstance(raw[name], dict):
            raise ConfigError(f"{where}{key} must be {type_name(section)}, got {raw[name]!r}", key=key)
        _check_tree(section, raw[name], key, where_of)


def _default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _apply_override(raw: dict[str, Any], text: str, root: type) -> str:
    """Apply one ``a.b.c=value`` to the raw tree; returns the dotted key."""
    key, eq, value_text = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. rollout.n=8")
    where = f"override {text!r}: "
    parts = key.split(".")
    cls, node, prefix = root, raw, ""
    for i, part in enumerate(parts):
        hints = field_types(cls)
        if part not in hints:
            raise unknown_key_error(prefix, part, list(hints), where=where)
        hint, full, rest = hints[part], dotted(prefix, part), parts[i + 1 :]
        section = _section_type(hint)
        if section is not None and rest:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            cls, node, prefix = section, node[part], full
            continue
        if typing.get_origin(hint) is dict and rest:
            if len(rest) > 1:
                raise ConfigError(f"{where}{full} is a flat mapping; set one entry as {full}.NAME=VALUE", key=full)
            if not isinstance(node.get(part), dict):
                node[part] = dict(_default(cls, part))
            node[part][rest[0]] = _parse_value(value_text, typing.get_args(hint)[1], where)
            return key
        if rest:
            raise ConfigError(f"{where}{full} has no sub-keys; set it as {full}=VALUE", key=full)
        value = _parse_value(value_text, hint, where)
        if section is not None:
            _merge_section(node, part, value, section, full, where)
        else:
            node[part] = value
        return key
    raise AssertionError("unreachable")


def _merge_section(node: dict, part: str, value: Any, section: type, full: str, where: str) -> None:
    """``learner.lora={r: 16}``: check the keys, then merge into what the file set."""
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}{full} is a section: give a mapping like {full}={{key: value}} or set one key as {full}.KEY=VALUE",
            key=full,
        )
    _check_tree(section, value, full, lambda _key: where)
    if not isinstance(node.get(part), dict):
        node[part] = {}
    _deep_merge(section, node[part], value)


def _deep_merge(cls: type, dst: dict, src: dict) -> None:
    """Merge ``src`` into ``dst``: sub-sections merge key by key, every other value replaces."""
    hints = field_types(cls)
    for k, v in src.items():
        section = _section_type(hints[k])
        if section is not None and isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_merge(section, dst[k], v)
        else:
            dst[k] = v


_NULLS = {"", "null", "~", "none"}


def _parse_value(text: str, hint: Any, where: str) -> Any:
    """YAML-parse an override value; string fields keep the text as typed (``0123`` stays "0123")."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    nullable = type(None) in args
    if nullable and text.strip().lower() in _NULLS:
        return None
    try:
        value = _safe_load_no_alias(text)[1]
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}cannot parse value {text!r}: {problem}") from None
    if str in args and not isinstance(value, str):
        return text
    return value


def _origin_of(key: str | None, origin: dict[str, str]) -> str | None:
    """Where the key (or the closest enclosing key) was set; None for defaults."""
    if not key:
        return None
    parts = re.sub(r"\[\d+\]$", "", key).split(".")
    for n in range(len(parts), 0, -1):
        where = origin.get(".".join(parts[:n]))
        if where:
            return where
    return None
