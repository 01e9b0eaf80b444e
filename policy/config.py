"""Config of the policy side (model, LoRA, learner) plus the small generic machinery
that every config section of the project shares.

Every section is a frozen dataclass whose ``__post_init__`` calls ``validate``:
each value is coerced to its annotated type (``1`` -> ``1.0`` for a float field,
a list -> a tuple, ``"1e-5"`` -> ``1e-05``) and checked against its range or
allowed choices. Errors are ``ConfigError`` naming the dotted key, e.g.
``learner.clip_eps must be in (0, 1), got 1.5``. The YAML loader lives in
``funrl.config`` (funrl may import every package; this one imports nothing above it).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from policy.grpo import ADVANTAGE_ESTIMATORS, AGG_MODES, KL_KINDS, POLICY_LOSSES


class ConfigError(ValueError):
    """A bad config value or key; ``key`` is the dotted key when one is known."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# ---------------------------------------------------------------- generic machinery


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate most similar to ``name`` (difflib), or None when nothing is close."""
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    return found[0] if found else None


def unknown_key_error(prefix: str, name: str, valid: list[str], where: str = "") -> ConfigError:
    """ConfigError for an unknown key, naming the closest valid one."""
    key = dotted(prefix, name)
    near = closest(name, valid)
    hint = f"; did you mean {prefix + '.' if prefix else ''}{near}?" if near else ""
    options = f" (valid keys{' under ' + prefix if prefix else ''}: {', '.join(valid)})"
    return ConfigError(f"{where}unknown config key {key!r}{hint}{options}", key=key)


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's init fields, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if _is_union(hint):
        return " or ".join(type_name(a) for a in typing.get_args(hint))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} keys"
    origin = typing.get_origin(hint)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {type_name(args[0])}"
        return f"a list of {len(args)} values ({', '.join(type_name(a) for a in args)})"
    if origin is dict:
        k, v = typing.get_args(hint)
        return f"a mapping {type_name(k)} -> {type_name(v)}"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce_scalar(value: Any, hint: type) -> Any:
    """Coerce one scalar or raise TypeError/ValueError (the caller words the message)."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise TypeError
    if isinstance(value, bool):  # never silently read True as 1
        raise TypeError
    if hint is int:
        if isinstance(value, int):
            return value
        number = float(value) if isinstance(value, (float, str)) else None
        if number is None or not math.isfinite(number) or not number.is_integer():
            raise ValueError
        return int(number)
    if hint is float:
        if not isinstance(value, (int, float, str)):
            raise TypeError
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)):
            return str(value)
        raise TypeError
    raise TypeError(f"unsupported config type {hint!r}")


def _coerce_tuple(value: Any, hint: Any, key: str) -> tuple:
    args = typing.get_args(hint)
    if isinstance(value, str) and len(args) == 2 and args[1] is Ellipsis:
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise TypeError
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ValueError
    return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))


def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to type ``hint``; ConfigError naming ``key`` when it cannot be."""
    if _is_union(hint):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key} must be {type_name(hint)}, got {value!r}", key=key)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return build(hint, value, key)
        raise ConfigError(f"{key} must be {type_name(hint)}, got {value!r}", key=key)
    origin = typing.get_origin(hint)
    try:
        if origin is tuple:
            return _coerce_tuple(value, hint, key)
        if origin is dict:
            if not isinstance(value, Mapping):
                raise TypeError
            k_hint, v_hint = typing.get_args(hint)
            return {coerce(k, k_hint, key): coerce(v, v_hint, f"{key}.{k}") for k, v in value.items()}
        return _coerce_scalar(value, hint)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{key} must be {type_name(hint)}, got {value!r}", key=key) from None


def build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a mapping; unknown keys name the closest valid one."""
    names = list(field_types(cls))
    for name in values:
        if name not in names:
            raise unknown_key_error(prefix, str(name), names)
    return cls(**values)


def validate(obj: Any, checks: Mapping[str, Callable[[Any], str | None]] | None = None) -> None:
    """Coerce every field of frozen dataclass ``obj`` to its type, then run ``checks``.

    ``checks`` maps a field name to a function returning None when the value is
    fine or the reason it is not ("must be > 0"); the message gets the dotted key.
    """
    section = obj.SECTION
    for name, hint in field_types(type(obj)).items():
        value = getattr(obj, name)
        new = coerce(value, hint, dotted(section, name))
        if new is not value:
            object.__setattr__(obj, name, new)
    for name, check in (checks or {}).items():
        value = getattr(obj, name)
        reason = check(value)
        if reason:
            key = dotted(section, name)
            raise ConfigError(f"{key} {reason}, got {value!r}", key=key)


def dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def in_range(
    lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
) -> Callable[[Any], str | None]:
    """Check for ``lo <(=) value <(=) hi``; phrases like "must be in (0, 1)" / "must be >= 0"."""

    def check(v: Any) -> str | None:
        bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
        bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
        if not (bad_lo or bad_hi):
            return None
        if lo is not None and hi is not None:
            return f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        if lo is not None:
            return f"must be {'>' if lo_open else '>='} {lo:g}"
        return f"must be {'<' if hi_open else '<='} {hi:g}"

    return check


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"

    return check


def optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    return lambda v: None if v is None else check(v)


def non_empty(v: Any) -> str | None:
    return None if len(v) > 0 else "must not be empty"


# ---------------------------------------------------------------- policy sections

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class ModelConfig:
    """The policy model: a local checkpoint folder (its config names the adapter)."""

    SECTION: ClassVar[str] = "model"
    path: str = ""  # local model folder, or a Hub id org/name[@revision] in the local HF cache
    # (policy.models.hub; never downloaded); "" = the built-in demo model
    dtype: str = "float32"
    train_encoder: bool = False  # train the audio encoder + adapter too (synced to the embedder)
    prompt: str | None = None  # instruction text; None = the model's default prompt

    def __post_init__(self) -> None:
        validate(self, {"dtype": one_of(*DTYPES, "float16")})


MAX_LORA_RANK = 512  # the largest max_lora_rank vLLM 0.32 serves (the top of rollout.vllm_worker.VLLM_LORA_RANKS)


@dataclass(frozen=True)
class LoraConfig:
    SECTION: ClassVar[str] = "learner.lora"
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "r": in_range(1, MAX_LORA_RANK),
                "alpha": in_range(0, lo_open=True),
                "dropout": in_range(0, 1, hi_open=True),
                "target_modules": lambda v: (
                    non_empty(v) or ("must not contain empty names" if any(not m for m in v) else None)
                ),
            },
        )


def _betas(v: tuple[float, float]) -> str | None:
    return None if all(0.0 <= b < 1.0 for b in v) else "must be two numbers in [0, 1)"


@dataclass(frozen=True)
class LearnerConfig:
    """GRPO learner: optimiser, loss options (docs/design.md#grpo-math), fine-tuning mode, ranks."""

    SECTION: ClassVar[str] = "learner"
    lr: float = 1e-5
    lr_schedule: str = "constant"  # constant | cosine | linear (after warm-up)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    advantage: str = "grpo"  # grpo | dr_grpo (no std division) | rloo (leave-one-out baseline)
    loss: str = "ppo_clip"  # ppo_clip (token ratio) | gspo (sequence ratio, length-normalised)
    clip_eps: float = 0.2
    clip_eps_low: float | None = None  # lower clip range; null = clip_eps
    clip_eps_high: float | None = None  # upper clip range; null = clip_eps (DAPO clip-higher: e.g. 0.28)
    beta: float = 0.04  # KL penalty weight; 0 = no reference kept or run (KL logged null)
    kl_kind: str = "k3"
    kl_clamp: float | None = 10.0  # per-token KL estimate bounded to [-kl_clamp, kl_clamp] (verl); null = off
    agg: str = "seq-mean-token-mean"  # | token-mean | seq-mean-token-sum-norm (Dr. GRPO: / max_new_tokens)
    ppo_epochs: int = 1
    mini_batches: int = 1  # optimizer steps per rollout (old log-probs computed once, before)
    tis_cap: float | None = None  # truncated importance sampling with vLLM's log-probs; null = off
    micro_batch: int = 8  # sequences per forward/backward
    share_prompts: bool = True  # run each clip's prompt once for its G rows (packed; same values)
    grad_clip: float = 1.0  # max grad norm; 0 disables clipping
    finetune: str = "full"  # full | lora
    lora: LoraConfig = field(default_factory=LoraConfig)
    dtype: str = "float32"
    ref_dtype: str = "float32"  # full fine-tuning's frozen reference copy: bfloat16 halves its memory
    activation_checkpointing: bool = False  # recompute each decoder layer in backward: less memory, more compute
    reshard_after_forward: bool = True  # False: keep the layers' gathered weights from forward to backward
    # (one all-gather less per layer, the full weights held meanwhile: ZeRO-2 instead of ZeRO-3)
    num_ranks: int = 1
    gpus_per_rank: float = 0.0
    cpu_threads: int = 0  # torch threads of a rank on CPU; 0 = Ray's default (1 per rank)
    seed: int = 0

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "lr": in_range(0, lo_open=True),
                "lr_schedule": one_of("constant", "cosine", "linear"),
                "warmup_steps": in_range(0),
                "weight_decay": in_range(0),
                "adam_betas": _betas,
                "advantage": one_of(*ADVANTAGE_ESTIMATORS),
                "loss": one_of(*POLICY_LOSSES),
                "clip_eps": in_range(0, 1, lo_open=True, hi_open=True),
                "beta": in_range(0),
                "clip_eps_low": optional(in_range(0, 1, lo_open=True, hi_open=True)),
                "clip_eps_high": optional(in_range(0, 1, lo_open=True, hi_open=True)),
                "kl_kind": one_of(*KL_KINDS),
                "kl_clamp": optional(in_range(0, lo_open=True)),
                "agg": one_of(*AGG_MODES),
                "ppo_epochs": in_range(1),
                "mini_batches": in_range(1),
                "tis_cap": optional(in_range(0, lo_open=True)),
                "micro_batch": in_range(1),
                "grad_clip": in_range(0),
                "finetune": one_of("full", "lora"),
                "dtype": one_of(*DTYPES),
                "ref_dtype": one_of(*DTYPES),
                "num_ranks": in_range(1),
                "gpus_per_rank": in_range(0),
                "cpu_threads": in_range(0),
                "seed": in_range(0),
            },
        )
