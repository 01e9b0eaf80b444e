"""Reward registry, composite scoring and plugin loading (DESIGN.md §3).

A reward is a function ``(hyps, refs, metas) -> list[float | None]`` that scores a
whole batch in one call; ``None`` means "not applicable to this item" (it is left
out of the total). ``@register(name)`` adds one to ``REGISTRY``; ``score_batch``
runs every registered reward once over the batch and adds the weighted ``total``.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from numbers import Real

__all__ = ["REGISTRY", "RewardError", "RewardFn", "register", "score_batch", "load_plugin", "resolve_weights"]

RewardFn = Callable[[list[str], list[str], list[dict]], list["float | None"]]

REGISTRY: dict[str, RewardFn] = {}
TOTAL = "total"


class RewardError(ValueError):
    """A reward, a weight or a plugin is wrong; the message says which and what to do."""


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register a batch reward function under ``name``; a name already taken raises."""
    if not isinstance(name, str) or not name or name == TOTAL:
        raise RewardError(f"reward name must be a non-empty string other than {TOTAL!r}, got {name!r}")

    def deco(fn: RewardFn) -> RewardFn:
        if not callable(fn):
            raise RewardError(f"reward {name!r}: {fn!r} is not callable")
        if name in REGISTRY:
            raise RewardError(f"reward {name!r} is already registered ({_describe(REGISTRY[name])}); "
                              "pick another name")
        REGISTRY[name] = fn
        return fn

    return deco


def _describe(fn: object) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"


def _registered_name(fn: object) -> str | None:
    for name, registered in REGISTRY.items():
        if registered is fn:
            return name
    return None


def load_plugin(spec: str) -> str:
    """Import ``module:function`` and register the function; returns its reward name.

    The function registers under its own ``__name__`` unless importing the module
    already registered it (``@register`` in the plugin), in which case that name is
    returned. Loading the same plugin twice is harmless.
    """
    module_name, sep, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not sep or not module_name or not attr:
        raise RewardError(f"plugin {spec!r}: expected 'module:function' (e.g. my_rewards:brevity)")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's, reported in one line
        raise RewardError(f"plugin {spec!r}: cannot import module {module_name!r} "
                          f"({type(exc).__name__}: {exc}); is it on PYTHONPATH?") from exc
    fn: object = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise RewardError(f"plugin {spec!r}: module {module_name!r} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise RewardError(f"plugin {spec!r}: {attr!r} is a {type(fn).__name__}, not a callable reward function")
    name = _registered_name(fn)
    if name is None:
        name = getattr(fn, "__name__", attr.rsplit(".", 1)[-1])
        register(name)(fn)  # type: ignore[arg-type]
    return name


def resolve_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """Weight per registered reward: all 1.0 for ``None``; otherwise missing names get 0.0.

    An unknown name or a non-finite / non-numeric weight raises ``RewardError``.
    """
    if weights is None:
        return {name: 1.0 for name in REGISTRY}
    unknown = [k for k in weights if k not in REGISTRY]
    if unknown:
        raise RewardError(f"unknown reward {unknown[0]!r} in weights; registered: {', '.join(REGISTRY)}")
    out = {name: 0.0 for name in REGISTRY}
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, Real) or not math.isfinite(float(w)):
            raise RewardError(f"weight of {name!r} must be a finite number, got {w!r}")
        out[name] = float(w)
    return out


def _run_reward(name: str, fn: RewardFn, hyps: list[str], refs: list[str], metas: list[dict]) -> list[float | None]:
    try:
        values = fn(hyps, refs, metas)
    except Exception as exc:  # noqa: BLE001 - name the failing reward, keep the cause chained
        raise RewardError(f"reward {name!r} failed: {type(exc).__name__}: {exc}") from exc
    values = list(values)
    if len(values) != len(hyps):
        raise RewardError(f"reward {name!r} returned {len(values)} values for a batch of {len(hyps)}")
    out: list[float | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
        elif isinstance(v, Real) and not isinstance(v, bool):
            out.append(float(v))
        else:
            raise RewardError(f"reward {name!r} returned {v!r} (a {type(v).__name__}) for item {i}; "
                              "expected a float or None")
    return out


def score_batch(hyps: Sequence[str], refs: Sequence[str], metas: Sequence[Mapping] | None = None,
                weights: Mapping[str, float] | None = None) -> list[dict[str, float | None]]:
    """Score every item with every registered reward (one call per reward over the batch).

    Returns one dict per item with every reward name and ``"total"`` =
    ``sum(w_k * r_k)`` over the rewards that are not ``None``. ``weights=None``
    weights every reward 1.0; a mapping gives 0.0 to the rewards it leaves out and
    raises ``RewardError`` (a ``ValueError``) on an unknown name.
    """
    w = resolve_weights(weights)
    hyps, refs = list(hyps), list(refs)
    metas = [{} for _ in hyps] if metas is None else [m if m is not None else {} for m in metas]
    if not len(hyps) == len(refs) == len(metas):
        raise RewardError(f"hyps, refs and metas must have the same length, got "
                          f"{len(hyps)}, {len(refs)}, {len(metas)}")
    columns = {name: _run_reward(name, fn, hyps, refs, metas) for name, fn in REGISTRY.items()}
    out: list[dict[str, float | None]] = []
    for i in range(len(hyps)):
        row: dict[str, float | None] = {name: col[i] for name, col in columns.items()}
        row[TOTAL] = sum(w[name] * v for name, v in row.items() if v is not None)
        out.append(row)
    return out
