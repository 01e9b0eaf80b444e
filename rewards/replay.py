"""Rescore a run's logged rollouts with another reward mix, without training (``python -m rewards replay``).

``RUN_DIR/rollouts.jsonl`` holds one JSON line per step, ``{"step": N, "clips": [{"audio", "ref",
"hyps": [...], "total": [...], "meta": {"lang", "keywords"}}, ...]}``: each clip is one GRPO group.
Every group is scored again with the new weights and both sets of totals are turned into advantages
(`rewards.advantages`), then compared:

- **best changed**: the share of groups whose set of best hypotheses (argmax of the total, all of the
  tied ones) differs; a tied best counts as changed only when the *set* changes;
- **flat**: the share of groups with all totals equal (or G < 2), advantage 0, in the run and new;
- **Spearman** (primary number): the rank correlation of the new advantages with the run's, pooled over
  every hypothesis of every group, so it sees both the order inside a group and how strongly each group
  pushes (and so the estimator); beside it, the mean of the per-group correlations over the groups that
  are flat in neither (blind to the estimator: every estimator orders a group as its totals do);
- the per-reward count / mean / std of the new scores, and of the run's logged total.

Totals are compared as float32, as training holds them, so ties and flat groups are exact equalities
as in training. The file is read one line at a time; only the advantages (two floats per hypothesis,
for the pooled correlation) are kept.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from rewards.advantages import ESTIMATORS, advantages, as_float32, best_set, is_flat, spearman
from rewards.registry import RewardError, resolve_weights, score_batch

__all__ = ["Group", "Moments", "ReplayReport", "RolloutsError", "read_steps", "replay", "format_report"]


class RolloutsError(ValueError):
    """The rollouts file is missing or a line of it is malformed; the message names file:line."""


@dataclass(frozen=True)
class Group:
    """One logged clip: its reference, the G hypotheses, their logged totals and the clip's meta (None:
    not logged, a file from before rollouts.jsonl recorded it)."""

    ref: str
    hyps: list[str]
    total: list[float]
    meta: dict | None


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_meta(meta: object, where: str) -> dict | None:
    if meta is None:
        return None
    if not isinstance(meta, dict):
        raise RolloutsError(f"{where}: 'meta' must be a JSON object, got {type(meta).__name__}")
    lang, kws = meta.get("lang"), meta.get("keywords")
    if lang is not None and not isinstance(lang, str):
        raise RolloutsError(f"{where}: meta 'lang' must be a string such as \"en\", got {type(lang).__name__}")
    if kws is not None and not (isinstance(kws, list) and all(isinstance(k, str) for k in kws)):
        raise RolloutsError(f"{where}: meta 'keywords' must be a list of strings")
    return meta


def _check_clip(clip: object, where: str) -> Group:
    if not isinstance(clip, dict):
        raise RolloutsError(f"{where}: expected a JSON object, got {type(clip).__name__}")
    for key in ("ref", "hyps", "total"):
        if key not in clip:
            raise RolloutsError(f'{where}: missing {key!r} (each clip needs "ref", "hyps" and "total")')
    ref, hyps, total = clip["ref"], clip["hyps"], clip["total"]
    if not isinstance(ref, str):
        raise RolloutsError(f"{where}: 'ref' must be a string, got {type(ref).__name__}")
    if not (isinstance(hyps, list) and hyps and all(isinstance(h, str) for h in hyps)):
        raise RolloutsError(f"{where}: 'hyps' must be a non-empty list of strings")
    if not (isinstance(total, list) and all(_is_number(t) for t in total)):
        raise RolloutsError(f"{where}: 'total' must be a list of finite numbers")
    if len(total) != len(hyps):
        raise RolloutsError(f"{where}: {len(total)} totals for {len(hyps)} hypotheses")
    return Group(ref=ref, hyps=hyps, total=[float(t) for t in total], meta=_check_meta(clip.get("meta"), where))


def _parse_line(raw: bytes, where: str) -> list[Group] | None:
    """The groups of one line (None: a blank line)."""
    try:
        line = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise RolloutsError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if not line:
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RolloutsError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise RolloutsError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    clips = obj.get("clips")
    if not isinstance(clips, list):
        raise RolloutsError(f"{where}: missing 'clips' (a list of the step's clips)")
    return [_check_clip(c, f"{where}: clip {k}") for k, c in enumerate(clips)]


def read_steps(path: str) -> Iterator[tuple[int, list[Group]]]:
    """(line number, groups) per non-blank line of a rollouts file ('-': stdin), one line at a time."""
    name = "stdin" if path == "-" else path
    try:
        f = sys.stdin.buffer if path == "-" else open(path, "rb")  # closed below
    except FileNotFoundError:
        raise RolloutsError(f"rollouts file not found: {path}") from None
    except OSError as exc:
        raise RolloutsError(f"cannot read rollouts file {path}: {exc.strerror or exc}") from None
    try:
        for num, raw in enumerate(f, start=1):
            groups = _parse_line(raw.removeprefix(b"\xef\xbb\xbf") if num == 1 else raw, f"{name}:{num}")
            if groups is not None:
                yield num, groups
    finally:
        if f is not sys.stdin.buffer:
            f.close()


@dataclass
class Moments:
    """Count, mean and population std of a stream of numbers (Welford)."""

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def as_dict(self) -> dict[str, float | int | None]:
        if not self.count:
            return {"count": 0, "mean": None, "std": None}
        return {"count": self.count, "mean": self.mean, "std": math.sqrt(max(0.0, self.m2) / self.count)}


@dataclass
class ReplayReport:
    """What `replay` found; ``as_dict`` is the ``--out`` JSON."""

    source: str
    weights: dict[str, float]
    advantage: str
    run_advantage: str
    steps: int = 0
    groups: int = 0
    hypotheses: int = 0
    best_changed: int = 0
    flat_run: int = 0
    flat_new: int = 0
    clips_without_meta: int = 0
    rewards: dict[str, Moments] = field(default_factory=dict)
    run_total: Moments = field(default_factory=Moments)
    spearman_pooled: float | None = None
    spearman_group_mean: float | None = None
    spearman_groups: int = 0

    def share(self, count: int) -> float | None:
        return count / self.groups if self.groups else None

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "weights": self.weights,
            "advantage": self.advantage,
            "run_advantage": self.run_advantage,
            "steps": self.steps,
            "groups": self.groups,
            "hypotheses": self.hypotheses,
            "clips_without_meta": self.clips_without_meta,
            "best_changed": {"count": self.best_changed, "share": self.share(self.best_changed)},
            "flat": {
                "run": {"count": self.flat_run, "share": self.share(self.flat_run)},
                "new": {"count": self.flat_new, "share": self.share(self.flat_new)},
            },
            "spearman": {
                "pooled": self.spearman_pooled,
                "per_group_mean": self.spearman_group_mean,
                "per_group_groups": self.spearman_groups,
            },
            "rewards": {name: m.as_dict() for name, m in self.rewards.items()},
            "run_total": self.run_total.as_dict(),
        }


def _rescore(
    groups: list[Group], weights: Mapping[str, float] | None, where: str, normalizer: str = "basic"
) -> list[list[dict]]:
    """Every hypothesis of the line scored in one batch, split back into groups; a reward error names the
    line, clip and hypothesis."""
    hyps = [h for g in groups for h in g.hyps]
    refs = [g.ref for g in groups for _ in g.hyps]
    metas = [dict(g.meta or {}) for g in groups for _ in g.hyps]
    try:
        rows = score_batch(hyps, refs, metas, weights, normalizer=normalizer)
    except RewardError as exc:
        if exc.item is None:
            raise
        clip, hyp = _locate(groups, exc.item)
        raise RewardError(
            f"{exc}; in {where}: clip {clip}, hypothesis {hyp}", reward=exc.reward, item=exc.item
        ) from exc
    out, start = [], 0
    for g in groups:
        out.append(rows[start : start + len(g.hyps)])
        start += len(g.hyps)
    return out


def _locate(groups: list[Group], item: int) -> tuple[int, int]:
    for k, g in enumerate(groups):
        if item < len(g.hyps):
            return k, item
        item -= len(g.hyps)
    raise IndexError(item)


def replay(
    path: str,
    weights: Mapping[str, float] | None = None,
    advantage: str = "grpo",
    run_advantage: str = "grpo",
    normalizer: str = "basic",
) -> ReplayReport:
    """Rescore every group of the rollouts file ``path`` with ``weights`` (as `score_batch`: None = all 1)
    and compare the advantages under ``advantage`` with the run's (its logged totals under ``run_advantage``).
    ``normalizer``: the text normaliser of the new scores (``rewards.text.NORMALIZERS``).

    Raises `RolloutsError` for a missing file, a malformed line or a file without groups, and
    `RewardError` for an unknown reward name or a reward that fails (naming file:line, clip, hypothesis).
    """
    active = {n: w for n, w in resolve_weights(weights).items() if w != 0.0}
    for est in (advantage, run_advantage):
        if est not in ESTIMATORS:
            raise ValueError(f"unknown advantage estimator {est!r}; choose one of {', '.join(ESTIMATORS)}")
    rep = ReplayReport(
        source=path,
        weights=active,
        advantage=advantage,
        run_advantage=run_advantage,
        rewards={name: Moments() for name in [*active, "total"]},
    )
    pooled_run: list[float] = []
    pooled_new: list[float] = []
    rho_sum = 0.0
    for num, groups in read_steps(path):
        where = f"{'stdin' if path == '-' else path}:{num}"
        rep.steps += 1
        for k, (group, rows) in enumerate(zip(groups, _rescore(groups, weights, where, normalizer))):
            a_run, a_new = _add_group(rep, group, rows, f"{where}: clip {k}")
            pooled_run += a_run
            pooled_new += a_new
            if not (is_flat(a_run) or is_flat(a_new)):
                rho_sum += spearman(a_run, a_new) or 0.0  # defined: neither side is constant
                rep.spearman_groups += 1
    if rep.groups == 0:
        raise RolloutsError(f"{'stdin' if path == '-' else path}: no logged groups in the file")
    rep.spearman_pooled = spearman(pooled_run, pooled_new)
    rep.spearman_group_mean = rho_sum / rep.spearman_groups if rep.spearman_groups else None
    return rep


def _add_group(rep: ReplayReport, group: Group, rows: list[dict], where: str) -> tuple[list[float], list[float]]:
    """Count one group into ``rep``; returns its advantages (run's, new)."""
    run_total = as_float32(group.total)
    new_total = as_float32([row["total"] for row in rows])
    if not all(math.isfinite(t) for t in run_total + new_total):
        raise RewardError(f"{where}: a total is beyond the float32 range that training holds rewards in")
    rep.groups += 1
    rep.hypotheses += len(group.hyps)
    rep.clips_without_meta += group.meta is None
    rep.flat_run += is_flat(run_total)
    rep.flat_new += is_flat(new_total)
    rep.best_changed += best_set(run_total) != best_set(new_total)
    for row, logged in zip(rows, group.total):
        rep.run_total.add(logged)
        for name, moments in rep.rewards.items():
            if row[name] is not None:
                moments.add(row[name])
    return advantages(run_total, rep.run_advantage), advantages(new_total, rep.advantage)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def format_report(rep: ReplayReport) -> str:
    """The readable table ``python -m rewards replay`` prints."""
    mix = ", ".join(f"{n}={w:g}" for n, w in rep.weights.items()) or "(all weights 0)"
    lines = [
        f"replay of {rep.source}: {rep.steps} steps, {rep.groups} groups, {rep.hypotheses} hypotheses",
        f"new mix: {mix}; advantage: {rep.advantage} (run's: {rep.run_advantage})",
        "",
        f"{'':<28}{'run':>9}{'new':>9}",
        f"{'flat groups (advantage 0)':<28}{_pct(rep.share(rep.flat_run)):>9}{_pct(rep.share(rep.flat_new)):>9}",
        f"{'best hypothesis changed':<28}{'':>9}{_pct(rep.share(rep.best_changed)):>9}"
        f"   {rep.best_changed} of {rep.groups} groups",
        f"{'Spearman, run vs new':<28}{'':>9}{_num(rep.spearman_pooled, '.3f'):>9}"
        f"   pooled over {rep.hypotheses} advantages",
        f"{'  mean per group':<28}{'':>9}{_num(rep.spearman_group_mean, '.3f'):>9}"
        f"   over {rep.spearman_groups} groups flat in neither",
        "",
        "per-reward scores under the new mix",
    ]
    stats = {**{n: m.as_dict() for n, m in rep.rewards.items()}, "total (run)": rep.run_total.as_dict()}
    width = max(len("reward"), *(len(n) for n in stats))
    lines.append(f"{'reward':<{width}}  {'count':>7}  {'mean':>8}  {'std':>8}")
    for name, s in stats.items():
        lines.append(f"{name:<{width}}  {s['count']:>7}  {_num(s['mean']):>8}  {_num(s['std']):>8}")
    return "\n".join(lines)
