"""The training config: every section as a frozen dataclass, YAML file + dotted overrides.

    cfg = load_config("my.yaml", ["rollout.n=8", "rewards.weights.wer=2", "learner.lora.r=16"])
    print(dump_config(cfg)); save_config(cfg, "runs/x/config.yaml")

Sections live beside the worker that uses them (``policy.config``: model, learner;
``rollout.config``: rollout); this module adds data, rewards, run, ray and the
loader. The loader is generic over nested dataclasses: it walks
``dataclasses.fields`` and the type hints, so a new field needs no loader code.
Override values are parsed with ``yaml.safe_load`` and coerced to the field's
type. YAML anchors and aliases are refused (file and overrides): nested aliases
expand exponentially ("billion laughs"). A YAML mapping given for ``rewards.weights`` replaces the whole mapping;
``rewards.weights.NAME=W`` changes one entry and keeps the others.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from funrl.data import write_text_atomic
from funrl.data_formats import FORMATS
from policy.augment import AugmentConfig
from policy.config import (
    ConfigError,
    LearnerConfig,
    LoraConfig,
    ModelConfig,
    build,
    closest,
    dotted,
    field_types,
    in_range,
    non_empty,
    one_of,
    optional,
    type_name,
    unknown_key_error,
    validate,
)
from rewards.text import NORMALIZERS
from rollout.config import RolloutConfig

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "LearnerConfig",
    "LoraConfig",
    "ModelConfig",
    "RayConfig",
    "RewardsConfig",
    "RolloutConfig",
    "RunConfig",
    "TrainConfig",
    "dump_config",
    "load_config",
    "save_config",
    "to_dict",
    "validate_reward_names",
]

DEFAULT_REWARDS = ("wer", "keyword", "hallucination", "language")
_PLUGIN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class DataConfig:
    """Manifests (docs/design.md#data-manifest); "" = not given."""

    SECTION: ClassVar[str] = "data"
    train_manifest: str = ""
    eval_manifest: str = ""
    test_manifest: str = ""
    format: str = "jsonl"  # of the three manifests: jsonl | hf_datasets (a datasets folder) | lhotse |
    # nemo (docs/data.md)
    audio_cache_dir: str = ""  # where audio that is not a whole file (embedded, an excerpt) is written as
    # wav; "" = .funrl_audio beside the data
    shuffle: bool = True
    max_audio_seconds: float = 30.0
    min_audio_seconds: float = 0.05  # shorter clips (less than a couple of feature frames) are bad audio
    on_bad_audio: str = "error"  # a clip whose audio does not decode, is too short/long or not finite:
    # error (all named before any worker starts) | skip (each named, left out)
    noise_per_step: int = 0  # noise-only clips (text "") in every training batch; 0 = sample uniformly
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # online augmentation of the training batches

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "max_audio_seconds": in_range(0, lo_open=True),
                "noise_per_step": in_range(0),
                "min_audio_seconds": in_range(0),
                "on_bad_audio": one_of("error", "skip"),
                "format": one_of(*FORMATS),
            },
        )
        if self.min_audio_seconds >= self.max_audio_seconds:
            raise ConfigError(
                f"data.min_audio_seconds ({self.min_audio_seconds:g}) must be below "
                f"data.max_audio_seconds ({self.max_audio_seconds:g})",
                key="data.min_audio_seconds",
            )


def _plugins(v: tuple[str, ...]) -> str | None:
    bad = [p for p in v if not _PLUGIN.fullmatch(p)]
    return f"must be module:function entries (bad: {', '.join(map(repr, bad))})" if bad else None


@dataclass(frozen=True)
class RewardsConfig:
    """Composite reward weights (name -> weight) and extra reward plugins (``module:function``)."""

    SECTION: ClassVar[str] = "rewards"
    weights: dict[str, float] = field(default_factory=lambda: {name: 1.0 for name in DEFAULT_REWARDS})
    plugins: tuple[str, ...] = ()
    normalizer: str = "basic"  # text normaliser of wer, keyword and eval: basic | whisper_en (Whisper's English
    # normaliser, as published ASR tables; extra whisper-en)

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "plugins": _plugins,
                "normalizer": one_of(*NORMALIZERS),
                "weights": lambda w: "must not have an empty name" if "" in w else None,
            },
        )


def _loggers(v: tuple[str, ...]) -> str | None:
    from funrl.loggers import LOGGERS

    bad = [name for name in v if name not in LOGGERS]
    if bad:
        return f"has unknown logger(s) {', '.join(map(repr, bad))}: choose from {', '.join(LOGGERS)}"
    if "jsonl" not in v:
        return "must include jsonl (metrics.jsonl: what funrl.plot reads and --resume trims)"
    return None


def _every(v: str) -> str | None:
    ok = v in ("all", "off") or (v.startswith("every_") and v[6:].isdigit() and int(v[6:]) > 0)
    return None if ok else "must be all, off or every_N with N >= 1 (e.g. every_10)"


@dataclass(frozen=True)
class RunConfig:
    SECTION: ClassVar[str] = "run"
    steps: int = 20
    clips_per_step: int = 8
    seed: int = 0
    out_dir: str = "runs/default"
    eval_every: int = 0  # 0 = only before and after training
    save_every: int = 10  # checkpoint every N steps (and at the last step)
    keep_last: int = 2
    dynamic_sampling: bool = False  # drop groups whose rewards are all equal
    max_refill_rounds: int = 0  # dynamic sampling: up to N extra rounds of clips to refill the batch to
    # clips_per_step groups that are not flat (DAPO); 0 = train on what is left
    save_model: bool = True  # write the trained model (its own format) to OUT/model at the end
    log_rollouts: str = "all"  # OUT/rollouts.jsonl: all | every_N (e.g. every_10) | off
    max_worker_restarts: int = 2  # a dead or hung (ray.call_timeout_s) rollout engine is restarted and re-synced
    # up to N times in a run; then the run stops with a checkpoint
    loggers: tuple[str, ...] = ("jsonl", "tensorboard")  # + wandb, mlflow (extras; offline / local files unless
    # WANDB_MODE / MLFLOW_TRACKING_URI say otherwise); jsonl is required
    project: str = "funrl"  # the W&B project and MLflow experiment of the run (named after OUT's folder)

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "steps": in_range(1),
                "clips_per_step": in_range(1),
                "seed": in_range(0),
                "out_dir": non_empty,
                "eval_every": in_range(0),
                "save_every": in_range(1),
                "keep_last": in_range(1),
                "max_refill_rounds": in_range(0),
                "log_rollouts": _every,
                "max_worker_restarts": in_range(0),
                "loggers": _loggers,
                "project": non_empty,
            },
        )
        if self.max_refill_rounds and not self.dynamic_sampling:
            raise ConfigError(
                "run.max_refill_rounds refills what dynamic sampling drops: set "
                "run.dynamic_sampling=true too (or max_refill_rounds=0)",
                key="run.max_refill_rounds",
            )


@dataclass(frozen=True)
class RayConfig:
    SECTION: ClassVar[str] = "ray"
    address: str | None = None  # None = start a local Ray; "auto" or host:port = join a cluster
    colocate: bool = False  # learner and rollout share the same GPUs
    num_cpus: int | None = None  # CPUs for a local Ray (None = Ray's default)
    call_timeout_s: float = 1800.0  # longest wait for one actor call (a step's generate, update, sync); past
    # it the actor counts as hung (an engine is restarted: run.max_worker_restarts)
    placement_strategy: str = "PACK"  # how the engines' and ranks' bundles spread over nodes (Ray's strategies)
    # extra Ray resources each engine's / each rank's bundle asks for, e.g. {rollout_node: 0.01}: only nodes
    # started with that resource (`ray start --resources`) take it
    # (docs/scaling.md#71-pinning-roles-to-nodes-and-the-two-node-test)
    rollout_resources: dict[str, float] = field(default_factory=dict)
    learner_resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "address": optional(non_empty),
                "num_cpus": optional(in_range(1)),
                "call_timeout_s": in_range(1),
                "placement_strategy": one_of(*PLACEMENT_STRATEGIES),
                "rollout_resources": _custom_resources,
                "learner_resources": _custom_resources,
            },
        )


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _custom_resources(v: dict[str, float]) -> str | None:
    builtin = [k for k in v if k in _BUILTIN_RESOURCES]
    if builtin:
        return f"names Ray's own resource(s) {builtin}: CPUs and GPUs come from rollout.* / learner.* settings"
    bad = [k for k, amount in v.items() if not k or not isinstance(amount, (int, float)) or amount <= 0]
    return f"needs a name and an amount > 0 for each resource (got {bad})" if bad else None


@dataclass(frozen=True)
class TrainConfig:
    SECTION: ClassVar[str] = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        validate(self)
        if self.data.noise_per_step >= self.run.clips_per_step:
            raise ConfigError(
                f"data.noise_per_step ({self.data.noise_per_step}) must be smaller than "
                f"run.clips_per_step ({self.run.clips_per_step})",
                key="data.noise_per_step",
            )
        if self.ray.colocate:
            self._check_colocation()
        if self.learner.mini_batches > self.run.clips_per_step:
            raise ConfigError(
                f"learner.mini_batches ({self.learner.mini_batches}) splits a step's clips into "
                f"optimizer steps: it must be <= run.clips_per_step ({self.run.clips_per_step})",
                key="learner.mini_batches",
            )
        if self.rollout.weight_sync == "collective" and self.learner.finetune == "lora":
            raise ConfigError(
                "rollout.weight_sync=collective broadcasts full weights; learner.finetune=lora moves only its adapter "
                "(a folder the engines load): set rollout.weight_sync=object_store or learner.finetune=full",
                key="rollout.weight_sync",
            )
        if self.rollout.n < 2:
            raise ConfigError(
                "rollout.n must be >= 2 for GRPO (advantages compare the n hypotheses "
                f"of a clip), got {self.rollout.n}",
                key="rollout.n",
            )

    def _check_colocation(self) -> None:
        workers, ranks = self.rollout.num_workers, self.learner.num_ranks
        if workers != ranks:
            raise ConfigError(
                f"ray.colocate=true pairs rollout worker i with learner rank i on one device: "
                f"rollout.num_workers ({workers}) must equal learner.num_ranks ({ranks})",
                key="ray.colocate",
            )
        share = self.rollout.gpus_per_worker + self.learner.gpus_per_rank
        if share > 1.0:
            raise ConfigError(
                f"ray.colocate=true shares one GPU between an engine and a rank: "
                f"rollout.gpus_per_worker + learner.gpus_per_rank must be <= 1, got {share:g} "
                f"(e.g. 0.5 + 0.5)",
                key="ray.colocate",
            )


def validate_reward_names(cfg: TrainConfig, registry_names: Iterable[str]) -> None:
    """Every name in ``rewards.weights`` must be a registered reward (call after loading plugins)."""
    names = sorted(registry_names)
    for name in cfg.rewards.weights:
        if name not in names:
            near = closest(name, names)
            hint = f"; did you mean rewards.weights.{near}?" if near else ""
            raise ConfigError(
                f"rewards.weights.{name}: unknown reward {name!r}{hint} (registered: {', '.join(names)})",
                key=f"rewards.weights.{name}",
            )


# ---------------------------------------------------------------- dump / save


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


def load_config(path: str | None, overrides: list[str], root: type = TrainConfig) -> Any:
    """Defaults <- YAML file ``path`` (any subset of keys) <- dotted ``overrides`` (``key=value``).

    ``root``: the top-level config dataclass (``TrainConfig``; ``funrl.sft.SftConfig`` reuses the loader).
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


def _read_yaml(path: str, root: type = TrainConfig) -> tuple[dict[str, Any], dict[str, int]]:
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


def _apply_override(raw: dict[str, Any], text: str, root: type = TrainConfig) -> str:
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
