"""Reward registry, composite scoring and plugin loading (docs/design.md#composite-reward-and-errors).

A reward is a function ``(hyps, refs, metas) -> list[float | None]`` that scores a
whole batch in one call; ``None`` means "not applicable to this item" (it is left
out of the total). ``@register(name)`` adds one to ``REGISTRY``; ``score_batch``
runs every registered reward of non-zero weight once over the batch and adds the
weighted ``total``; a reward that fails or returns anything but one finite
float or None per item raises a ``RewardError`` naming it and the clip.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Real

from rewards.text import NormalizerError, check_normalizer, using_normalizer

__all__ = [
    "REGISTRY",
    "NonFiniteRewardError",
    "RewardError",
    "RewardFn",
    "clip_label",
    "register",
    "score_batch",
    "load_plugin",
    "resolve_weights",
]

RewardFn = Callable[[list[str], list[str], list[dict]], list["float | None"]]

REGISTRY: dict[str, RewardFn] = {}
TOTAL = "total"


class RewardError(ValueError):
    """A reward, a weight or a plugin is wrong; the message says which and what to do.

    ``reward`` names the reward and ``item`` the batch index of the clip, when the error is about one.
    """

    def __init__(self, message: str, *, reward: str | None = None, item: int | None = None) -> None:
        super().__init__(message)
        self.reward = reward
        self.item = item


class NonFiniteRewardError(RewardError):
    """A reward (or the weighted total) is NaN or infinite for one clip; ``value`` is that value."""

    def __init__(
        self, message: str, *, reward: str | None = None, item: int | None = None, value: float = math.nan
    ) -> None:
        super().__init__(message, reward=reward, item=item)
        self.value = value


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: register a batch reward function under ``name``; a name already taken raises."""
    if not isinstance(name, str) or not name or name == TOTAL:
        raise RewardError(f"reward name must be a non-empty string other than {TOTAL!r}, got {name!r}")

    def deco(fn: RewardFn) -> RewardFn:
        if not callable(fn):
            raise RewardError(f"reward {name!r}: {fn!r} is not callable")
        if name in REGISTRY:
            raise RewardError(f"reward {name!r} is already registered ({_describe(REGISTRY[name])}); pick another name")
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
    except Exception as exc:  # any import failure is the plugin's, reported in one line
        raise RewardError(
            f"plugin {spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}); is it on PYTHONPATH?"
        ) from exc
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
        register(name)(fn)
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


def _short(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}..."


def clip_label(i: int, hyps: Sequence[str], refs: Sequence[str]) -> str:
    """How an error names item ``i`` of a batch: its index, reference and hypothesis (each cut to 40 chars)."""
    return f"clip {i} (ref {_short(refs[i])}, hyp {_short(hyps[i])})"


def _shown(x: float) -> str:
    return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def _as_float(v: Real) -> float:
    try:
        return float(v)
    except OverflowError:  # an int beyond the float range
        return -math.inf if v < 0 else math.inf


def _first_failing_clip(fn: RewardFn, hyps: list[str], refs: list[str], metas: list[dict]) -> int | None:
    """The first item on which the reward raises when called on that item alone (None: none does)."""
    for i in range(len(hyps)):
        try:
            fn(hyps[i : i + 1], refs[i : i + 1], metas[i : i + 1])
        except Exception:  # noqa: BLE001 - only locating the failure; the batch's exception is reported
            return i
    return None


def _call(name: str, fn: RewardFn, hyps: list[str], refs: list[str], metas: list[dict]) -> list:
    """``fn`` over the batch as a list of one value per item; anything else is a RewardError naming it."""
    try:
        values = fn(hyps, refs, metas)
        if not isinstance(values, (str, bytes, Mapping)) and isinstance(values, Iterable):
            values = list(values)
    except Exception as exc:  # name the failing reward (and clip), keep the cause chained
        where = _first_failing_clip(fn, hyps, refs, metas) if len(hyps) > 1 else (0 if hyps else None)
        if where is None:
            tail = f"; no clip of the {len(hyps)} fails alone" if len(hyps) > 1 else ""
        else:
            tail = f"; {clip_label(where, hyps, refs)}" + (" fails alone too" if len(hyps) > 1 else "")
        raise RewardError(
            f"reward {name!r} failed: {type(exc).__name__}: {exc}{tail}", reward=name, item=where
        ) from exc
    if not isinstance(values, list):
        raise RewardError(
            f"reward {name!r} returned a {type(values).__name__} ({values!r:.40}), not a list of "
            f"{len(hyps)} values (one float or None per clip)",
            reward=name,
        )
    if len(values) != len(hyps):
        raise RewardError(f"reward {name!r} returned {len(values)} values for a batch of {len(hyps)}", reward=name)
    return values


def _run_reward(
    name: str, fn: RewardFn, hyps: list[str], refs: list[str], metas: list[dict], allow_nonfinite: bool = False
) -> list[float | None]:
    out: list[float | None] = []
    for i, v in enumerate(_call(name, fn, hyps, refs, metas)):
        if v is None:
            out.append(None)
            continue
        if not isinstance(v, Real) or isinstance(v, bool):
            raise RewardError(
                f"reward {name!r} returned {v!r:.40} (a {type(v).__name__}) for "
                f"{clip_label(i, hyps, refs)}; expected a float or None",
                reward=name,
                item=i,
            )
        x = _as_float(v)
        if not (allow_nonfinite or math.isfinite(x)):
            raise NonFiniteRewardError(
                f"reward {name!r} returned {_shown(x)} for {clip_label(i, hyps, refs)}; "
                "a reward must be a finite number or None",
                reward=name,
                item=i,
                value=x,
            )
        out.append(x)
    return out


def score_batch(
    hyps: Sequence[str],
    refs: Sequence[str],
    metas: Sequence[Mapping] | None = None,
    weights: Mapping[str, float] | None = None,
    *,
    allow_nonfinite: bool = False,
    normalizer: str = "basic",
) -> list[dict[str, float | None]]:
    """Score every item with every reward of non-zero weight (one call per reward over the batch).

    Returns one dict per item with the name of every reward that was run and ``"total"`` =
    ``sum(w_k * r_k)`` over the rewards that are not ``None``. ``weights=None`` weights every
    reward 1.0; a mapping gives 0.0 to the rewards it leaves out and raises ``RewardError`` (a
    ``ValueError``) on an unknown name. A reward of weight 0 is not run and not in the rows.

    A reward that raises, returns anything but one float or ``None`` per item, or a NaN / inf
    (or a total that overflows) raises ``RewardError`` naming the reward and the clip (a NaN /
    inf: its subclass ``NonFiniteRewardError``); ``allow_nonfinite=True`` keeps NaN / inf instead.

    ``normalizer`` (``rewards.text.NORMALIZERS``: basic, whisper_en) is the text normaliser of the rewards that
    compare words with the reference (``wer``, ``keyword``; a plugin reads it with
    ``rewards.text.active_normalizer()``); an unknown or uninstalled one raises ``RewardError``.
    """
    w = {name: wt for name, wt in resolve_weights(weights).items() if wt != 0.0}
    hyps, refs = list(hyps), list(refs)
    # reward functions get dicts (RewardFn); a dict is passed as it is, another mapping as a dict copy
    meta_rows: list[dict] = (
        [{} for _ in hyps] if metas is None else [m if isinstance(m, dict) else dict(m or {}) for m in metas]
    )
    if not len(hyps) == len(refs) == len(meta_rows):
        raise RewardError(
            f"hyps, refs and metas must have the same length, got {len(hyps)}, {len(refs)}, {len(meta_rows)}"
        )
    try:
        check_normalizer(normalizer)
    except NormalizerError as exc:
        raise RewardError(str(exc)) from None
    with using_normalizer(normalizer):
        columns = {name: _run_reward(name, REGISTRY[name], hyps, refs, meta_rows, allow_nonfinite) for name in w}
    out: list[dict[str, float | None]] = []
    for i in range(len(hyps)):
        row: dict[str, float | None] = {name: col[i] for name, col in columns.items()}
        total = sum(w[name] * v for name, v in row.items() if v is not None)
        if not (allow_nonfinite or math.isfinite(total)):
            raise NonFiniteRewardError(
                f"reward {TOTAL} is {_shown(total)} for {clip_label(i, hyps, refs)}: the weighted sum overflowed",
                reward=TOTAL,
                item=i,
                value=total,
            )
        row[TOTAL] = total
        out.append(row)
    return out
