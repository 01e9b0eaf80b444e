"""The one place where plain worker classes become Ray actors, and where Ray failures get actor names.

* `remote_class(cls, **options)`: ``ray.remote(cls)`` with actor options (``num_cpus``, ``num_gpus``,
  ``scheduling_strategy``, ``runtime_env`` ...); call ``.remote(*args)`` on the result to start an actor.
* `WorkerError`: an actor died or raised; the message names the actor and carries the remote traceback.
  `WorkerTimeout` (a `WorkerError` and a ``TimeoutError``): an actor call gave no answer in time.
* `reserve_placement_group(bundles, ...)`: a ready placement group, or an error naming what did not fit.
* `get_named(named_refs)`: ``ray.get`` of several calls that fails fast, on the first failure, with a
  `WorkerError` naming that actor (other calls may be stuck in a collective with a dead peer).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

_REMOTE: dict[type, Any] = {}


class WorkerError(RuntimeError):
    """A Ray actor failed. ``actor``: its name (e.g. "learner rank 1"); ``cause``: the remote exception when
    it raised (None when it died); ``remote_traceback``: the traceback text from the actor's process."""

    def __init__(
        self, message: str, *, actor: str | None = None, cause: BaseException | None = None, remote_traceback: str = ""
    ) -> None:
        super().__init__(message)
        self.actor = actor
        self.cause = cause
        self.remote_traceback = remote_traceback


class WorkerTimeout(WorkerError, TimeoutError):
    """An actor call gave no answer within its timeout (a hung actor); ``actor`` names the first one waited on."""


def remote_class(cls: type, **options: Any) -> Any:
    """``ray.remote(cls)`` (built once per class) with ``options`` applied; use ``.remote(...)`` on it."""
    if cls not in _REMOTE:
        _REMOTE[cls] = ray.remote(cls)
    actor_cls = _REMOTE[cls]
    return actor_cls.options(**options) if options else actor_cls


def in_bundle(pg: PlacementGroup, index: int) -> PlacementGroupSchedulingStrategy:
    """Scheduling strategy that puts an actor or task in bundle ``index`` of ``pg``."""
    return PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=index, placement_group_capture_child_tasks=False
    )


def reserve_placement_group(
    bundles: Sequence[dict[str, float]], strategy: str, timeout_s: float, what: str
) -> PlacementGroup:
    """A ready placement group of ``bundles``; if Ray cannot place it within ``timeout_s``, the group is
    removed and ``RuntimeError`` says ``what`` could not be placed (name the config keys there) and what
    the cluster has free."""
    pg = placement_group([dict(b) for b in bundles], strategy=strategy)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise RuntimeError(
            f"cannot place {what} within {timeout_s:.0f} s; the cluster has {ray.available_resources()} available"
        )
    return pg


def worker_error(actor: str, exc: BaseException) -> WorkerError:
    """A `WorkerError` for a failed call on ``actor`` (RayTaskError: it raised; RayActorError: it died)."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if isinstance(exc.cause, BaseException) else None
        text = str(exc)
        kind = type(cause).__name__ if cause is not None else "an error"
        return WorkerError(f"{actor} raised {kind}:\n{text}", actor=actor, cause=cause, remote_traceback=text)
    if isinstance(exc, ray.exceptions.RayActorError):
        return WorkerError(f"{actor} died: {exc}", actor=actor, remote_traceback=str(exc))
    return WorkerError(f"{actor} failed: {type(exc).__name__}: {exc}", actor=actor, cause=exc)


def get_named(named_refs: Sequence[tuple[str, Any]], timeout_s: float | None = None) -> list[Any]:
    """Results of ``[(actor name, ObjectRef), ...]`` in order; raises `WorkerError` for the first call
    that fails, as soon as it fails, and `WorkerTimeout` naming the calls still running after ``timeout_s``
    seconds without an answer."""
    pending = {ref: i for i, (_, ref) in enumerate(named_refs)}
    results: list[Any] = [None] * len(named_refs)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout_s)
        if not ready:
            waiting = sorted(pending.values())
            names = ", ".join(named_refs[i][0] for i in waiting)
            raise WorkerTimeout(
                f"no answer after {timeout_s:g} s from {names} (hung? ray.call_timeout_s sets the limit)",
                actor=named_refs[waiting[0]][0],
            )
        for ref in ready:
            i = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except (ray.exceptions.RayError, Exception) as exc:  # re-raised with the name
                raise worker_error(named_refs[i][0], exc) from exc
    return results
