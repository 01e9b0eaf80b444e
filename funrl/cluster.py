"""Ray wiring: start or join Ray, place the three workers, fan calls out to them.

The workers are plain classes (``rollout.embedding.AudioEmbeddingWorker``,
``rollout.vllm_worker.VLLMRolloutWorker``, ``policy.learner.Learner``); this module
and ``policy.learner_group`` are the only places that turn them into Ray actors.
A failing actor surfaces as ``WorkerError`` naming the actor, with its traceback; a call that gives no answer
within ``ray.call_timeout_s`` as `WorkerTimeout`. A rollout engine that dies or hangs is restarted, brought to the
current weights and asked again, up to ``run.max_worker_restarts`` times in a run.
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import ray
import torch
from ray._raylet import AuthenticationMode, get_authentication_mode
from ray._raylet import Config as RayConfig

from funrl.config import TrainConfig
from funrl.local_ray import LocalRay
from funrl.placement import Placement, create_placement
from funrl.placement import describe as describe_placement
from funrl.syncs import make_syncs
from policy.messages import Clip, LearnStats, PromptBatch, RolloutBatch, ScoredRollout, payload_bytes
from policy.ray_utils import WorkerError, WorkerTimeout, get_named, in_bundle, remote_class

if TYPE_CHECKING:
    from policy.learner_group import LearnerGroup

__all__ = ["NO_USAGE_STATS", "Cluster", "WorkerError", "WorkerTimeout", "worker_env"]

# No usage statistics from Ray, vLLM or the Hugging Face hub (names as read by the installed packages:
# ray._common.usage.usage_lib, vllm.envs, huggingface_hub.constants). Forced, not defaults.
NO_USAGE_STATS = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}
# Defaults for the driver and every Ray worker; RAY_AUTH_MODE=token: Ray token authentication
# (docs/security.md), RAY_AUTH_MODE=disabled in the environment opts out (e.g. an old cluster).
_WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "RAY_AUTH_MODE": "token",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_LOGGING_LEVEL": "WARNING",
}


def worker_env(local: bool) -> dict[str, str]:
    """Set up this (driver) process's environment before Ray starts; returns the workers' ``env_vars``.

    Usage statistics are switched off, the ``_WORKER_ENV`` defaults filled in. With token authentication
    and a Ray this process starts itself (``local``) and no token given (``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``), a fresh random token for this run goes into the environment: the Ray
    processes inherit it, nothing is written to disk, and it is never put in the workers' runtime_env
    (which the cluster stores and shows). Joining a cluster uses the cluster's token (``~/.ray/auth_token``
    or the variables above)."""
    os.environ.update(NO_USAGE_STATS)
    for key, value in _WORKER_ENV.items():
        os.environ.setdefault(key, value)
    token_auth = os.environ["RAY_AUTH_MODE"].lower() == "token"
    if token_auth and local and not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # Ray reads RAY_AUTH_MODE once, at import; make this process see the value just set (as
    # ray.init itself does when it turns token mode on)
    if (get_authentication_mode() == AuthenticationMode.TOKEN) != token_auth:
        RayConfig.initialize("")
    return {k: os.environ[k] for k in (*_WORKER_ENV, *NO_USAGE_STATS)}


def _worker_failure(exc_type: type | None) -> bool:
    """An actor or Ray failed (its logs are worth keeping), not the input or a signal."""
    return exc_type is not None and issubclass(exc_type, (WorkerError, ray.exceptions.RayError))


def _get(name: str, ref, timeout_s: float | None = None):
    """ray.get that names the actor (and carries its traceback) when it fails or gives no answer in time."""
    return get_named([(name, ref)], timeout_s=timeout_s)[0]


def _split(n: int, parts: int) -> list[range]:
    """Contiguous, near-equal ranges covering 0..n-1."""
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i + 1] > bounds[i]]


class Cluster:
    """The running actors of one training run. Use as a context manager."""

    def __init__(self, cfg: TrainConfig, after_embedder: Callable[["Cluster"], None] | None = None) -> None:
        """``after_embedder(cluster)``: runs once the embedding worker is up, before the engines and the learner
        start (e.g. the prompt-length check of the run's clips)."""
        self.cfg = cfg
        self._after_embedder = after_embedder
        self.out = Path(cfg.run.out_dir)
        self.policy_version = 0  # learner updates behind the weights the engines serve (set by each sync)
        self._own_ray = False
        self._local_ray: LocalRay | None = None
        self.timeout_s = cfg.ray.call_timeout_s
        self.restarts = 0  # rollout engines restarted so far (run.max_worker_restarts)
        self.updates_started = 0  # learner updates begun / finished: tell the driver, after a
        self.updates_finished = 0  # failure, which step's weights the learner holds
        self.transfer = TransferMeter()  # bytes of the messages through Ray's object store, by stage

    # ---- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> "Cluster":
        try:
            self._start_ray()
            self._start_actors()
        except BaseException as exc:
            self.shutdown(keep_ray_logs=_worker_failure(type(exc)))
            raise
        return self

    def _start_actors(self) -> None:
        cfg = self.cfg
        AudioEmbeddingWorker, VLLMRolloutWorker, LearnerGroup = _actor_classes()
        from rollout.engine_folder import export_engine_llm  # imported on first use, as the actor classes are

        on_gpu = cfg.rollout.gpus_per_worker > 0
        gpus = cfg.rollout.gpus_per_embedder
        embed_cls = remote_class(AudioEmbeddingWorker, num_cpus=1, num_gpus=gpus)
        self.embedders = [
            embed_cls.remote(
                cfg.model,
                cfg.data.max_audio_seconds,
                cfg.rollout.embed_batch_size,
                augment=cfg.data.augment,
                device="cuda" if gpus > 0 else "cpu",
            )
            for _ in range(cfg.rollout.num_embedders)
        ]
        if self._after_embedder is not None:
            self._after_embedder(self)
        # the engines' LLM folder, written here (the driver has the model code imported already; the embedding
        # workers hold no LLM to write it from)
        llm_dir = export_engine_llm(cfg.model, str(self.out / "rollout_llm"))
        placement = create_placement(cfg)
        self.placement: Placement | None = placement
        print(f"[funrl] placement: {describe_placement(placement)}", flush=True)
        plan, pg = placement.plan, placement.pg
        lora = cfg.lora_adapter_sync  # the engines serve a LoRA adapter (else they get full weights)
        self._engine_dtype = cfg.model.dtype if on_gpu else "float32"  # weight sync sends this dtype

        def start_engine(i: int):
            return remote_class(
                VLLMRolloutWorker,
                num_cpus=1,
                num_gpus=cfg.rollout.gpus_per_worker,
                scheduling_strategy=in_bundle(pg, plan.rollout[i]),
            ).remote(llm_dir, cfg.rollout, dtype=self._engine_dtype, enable_lora=lora, max_lora_rank=cfg.learner.lora.r)

        self._start_engine = start_engine
        self.rollouts = [start_engine(i) for i in range(cfg.rollout.num_workers)]
        self.learner = LearnerGroup(
            cfg.model.path,
            cfg.model,
            cfg.learner,
            total_steps=cfg.run.steps,
            max_audio_seconds=cfg.data.max_audio_seconds,
            temperature=cfg.rollout.temperature,
            max_new_tokens=cfg.rollout.max_new_tokens,
            placement=(pg, plan.learner),
            call_timeout_s=self.timeout_s,
            augment=cfg.data.augment,
        )
        # surface a failed engine start now, by name (a first start may compile: no call timeout)
        get_named([(f"rollout worker {i}", r.ready.remote()) for i, r in enumerate(self.rollouts)])
        self.syncs = make_syncs(cfg, self.learner, self.embedders, self.rollouts, self._engine_dtype, self.timeout_s)

    def __exit__(self, exc_type, *exc) -> None:
        self.shutdown(keep_ray_logs=_worker_failure(exc_type))

    def _start_ray(self) -> None:
        if ray.is_initialized():
            return
        cfg = self.cfg
        env = {"env_vars": worker_env(local=not cfg.ray.address)}  # the driver's and its workers' env
        if cfg.ray.address:
            ray.init(address=cfg.ray.address, runtime_env=env, log_to_driver=True)
        else:
            need = cfg.rollout.num_embedders + cfg.rollout.num_workers + cfg.learner.num_ranks
            num_cpus = cfg.ray.num_cpus or max(need, os.cpu_count() or 1)
            num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            # its own session: group signals reach the driver only; the actor classes import while it boots
            self._local_ray = LocalRay(num_cpus, num_gpus, wait=False)
            _actor_classes()
            self._local_ray.wait_ready()
            ray.init(address=self._local_ray.address, runtime_env=env, log_to_driver=True)
        self._own_ray = True

    def shutdown(self, keep_ray_logs: bool = False) -> None:
        """Stop the learner group and the workers; stop Ray if this run started it (keeping its logs, and
        printing where they are, with ``keep_ray_logs``: after a failure)."""
        group = getattr(self, "learner", None)
        if group is not None:
            try:
                group.shutdown()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
        for actor in [*getattr(self, "rollouts", []), *getattr(self, "embedders", [])]:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass
        placement = getattr(self, "placement", None)
        if placement is not None:
            try:
                placement.remove()
            except Exception:  # noqa: BLE001 - Ray already gone
                pass
            self.placement = None
        if self._own_ray and ray.is_initialized():
            ray.shutdown()
        local, self._local_ray = self._local_ray, None
        if local is not None:
            local.stop(keep_logs=keep_ray_logs)
            if keep_ray_logs:
                print(f"[funrl] the local Ray's logs of this run: {local.logs_dir}", file=sys.stderr, flush=True)

    # ---- engine restarts -------------------------------------------------------------
    def _with_restarts(self, call):
        """``call()`` (which uses the rollout engines); a rollout engine that died or hung in it is restarted,
        brought to the current weights, and ``call()`` runs again, while ``run.max_worker_restarts`` allows."""
        while True:
            try:
                return call()
            except WorkerError as err:
                i = _failed_engine(err)
                if i is None or self.restarts >= self.cfg.run.max_worker_restarts:
                    raise
                self.restarts += 1
                why = (
                    "gave no answer"
                    if isinstance(err, TimeoutError) or isinstance(err.cause, TimeoutError)
                    else "failed"
                )
                print(
                    f"[funrl] rollout worker {i} {why}; restarting it ({self.restarts} of "
                    f"{self.cfg.run.max_worker_restarts} restarts)",
                    file=sys.stderr,
                )
                self._restart_engine(i)

    def _restart_engine(self, i: int) -> None:
        ray.kill(self.rollouts[i], no_restart=True)
        self.rollouts[i] = engine = self._start_engine(i)
        _get(f"rollout worker {i}", engine.ready.remote())
        for sync in self.syncs:
            sync.restore(engine, i, self.policy_version)

    # ---- the stages of a step --------------------------------------------------------
    def prompt_lengths(self, clips: list[Clip], limit: int) -> list[int | None]:
        """`AudioEmbeddingWorker.prompt_lengths` of ``clips``, split over the embedding workers."""
        return [n for part in self._on_embedders("prompt_lengths", clips, limit) for n in part]

    def embed(self, clips: list[Clip]) -> PromptBatch:
        """Prompt embeddings of ``clips``, split over the embedding workers (``rollout.num_embedders``)."""
        prompts = PromptBatch.concat(self._on_embedders("embed", clips))
        self.transfer.add("embed", payload_bytes(prompts))
        return prompts

    def _on_embedders(self, method: str, clips: list[Clip], *args) -> list:
        """``method(part, *args)`` of each embedding worker on its contiguous part of ``clips``, in order."""
        parts = _split(len(clips), len(self.embedders))
        refs = [
            (f"embedding worker {i}", getattr(e, method).remote([clips[j] for j in rng], *args))
            for i, (e, rng) in enumerate(zip(self.embedders, parts))
        ]
        return get_named(refs, timeout_s=self.timeout_s)

    def generate(
        self, prompts: PromptBatch, greedy: bool = False, seed: int | None = None, restarts: bool = True
    ) -> RolloutBatch:
        """Clips split over the engines; ``seed``: engine k resets its random stream to ``seed + (index of its
        first clip)`` (`VLLMRolloutWorker.generate`), so the same prompts on the same weights give the same
        hypotheses, also after an engine restart or a resume. ``restarts=False``: an engine that fails is not
        restarted here (sampling ahead runs beside the update: the step repairs it after)."""
        if not restarts:
            return self._generate(prompts, greedy, seed)
        return self._with_restarts(lambda: self._generate(prompts, greedy, seed))

    def _generate(self, prompts: PromptBatch, greedy: bool, seed: int | None) -> RolloutBatch:
        parts = [(rng, _slice_prompts(prompts, rng)) for rng in _split(len(prompts.clips), len(self.rollouts))]
        refs = [
            (
                f"rollout worker {i}",
                w.sample.remote(part, greedy=greedy, seed=None if seed is None else seed + rng.start),
            )
            for i, (w, (rng, part)) in enumerate(zip(self.rollouts, parts))
        ]
        samples = get_named(refs, timeout_s=self.timeout_s)
        self.transfer.add("generate", payload_bytes(prompts) + payload_bytes(samples))
        return RolloutBatch.concat([RolloutBatch.of(part, s) for (_, part), s in zip(parts, samples)], prompts)

    def update(self, batch: ScoredRollout, max_lag: int = 0) -> LearnStats:
        """One learner update; colocated engines sleep meanwhile (GPU memory goes to the learner). ``max_lag``: the
        learner takes a batch sampled up to that many versions ago (``run.async_steps``)."""
        if self.cfg.ray.colocate:
            self._get_all("rollout worker", [w.sleep.remote() for w in self.rollouts])
        self.updates_started += 1
        self.transfer.add("update", payload_bytes(batch))
        try:
            stats = self.learner.update(batch, max_lag)
            self.updates_finished += 1
            self.policy_version += 1
            return stats
        finally:
            if self.cfg.ray.colocate:
                self._get_all("rollout worker", [w.wake_up.remote() for w in self.rollouts])

    def sync(self) -> None:
        """The learner's weights to every worker that samples or embeds with them: each of the run's weight syncs
        (`funrl.syncs.make_syncs`) pushes the current policy version; one that feeds the engines is retried after
        restarting an engine that failed in it."""
        for sync in self.syncs:
            if sync.feeds_engines:
                self._with_restarts(lambda sync=sync: sync.push(self.policy_version))
            else:
                sync.push(self.policy_version)

    # ---- checkpoints -----------------------------------------------------------------
    def save_checkpoint(self, folder: Path) -> None:
        self.learner.save_checkpoint(str(Path(folder) / "learner"))

    def load_checkpoint(self, folder: Path) -> None:
        """The learner's state from ``folder``; the policy version continues from its update count (the caller
        then syncs the engines to it)."""
        self.policy_version = int(self.learner.load_checkpoint(str(folder))["updates"])

    def _get_all(self, name: str, refs: list) -> list:
        return get_named([(f"{name} {i}", ref) for i, ref in enumerate(refs)], timeout_s=self.timeout_s)


class TransferMeter:
    """Bytes of the tensors in the messages the driver exchanges with the actors (`payload_bytes`), summed by
    stage (``embed``: prompts from the embedding workers; ``generate``: prompts to the engines and samples back;
    ``update``: the scored batch to the learner, put once for all its ranks) until `take`. Thread-safe (the
    next step samples in a thread with ``run.async_steps=1``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes: dict[str, int] = {}

    def add(self, stage: str, nbytes: int) -> None:
        with self._lock:
            self._bytes[stage] = self._bytes.get(stage, 0) + nbytes

    def take(self) -> dict[str, float]:
        """``transfer.<stage>_mb`` and ``transfer.mb`` (MiB) since the last call; the meter restarts at 0."""
        with self._lock:
            counts, self._bytes = self._bytes, {}
        out = {f"transfer.{k}_mb": v / 2**20 for k, v in sorted(counts.items())}
        return out | {"transfer.mb": sum(counts.values()) / 2**20}


def _actor_classes() -> tuple[type, type, type[LearnerGroup]]:
    """The embedding worker, rollout worker and learner group classes, imported on first use: their modules
    load torch, transformers and the model code (seconds), which a run that stops at a config or data error
    never needs."""
    from policy.learner_group import LearnerGroup
    from rollout.embedding import AudioEmbeddingWorker
    from rollout.vllm_worker import VLLMRolloutWorker

    return AudioEmbeddingWorker, VLLMRolloutWorker, LearnerGroup


def _failed_engine(err: WorkerError) -> int | None:
    """The index of the rollout engine a failure names (directly, or as the cause of a learner rank's failure
    while sending it weights); None for any other actor."""
    for e in (err, err.cause):
        name = getattr(e, "actor", None) or ""
        if isinstance(e, WorkerError) and name.startswith("rollout worker "):
            return int(name.rsplit(" ", 1)[1])
    return None


def _slice_prompts(prompts: PromptBatch, rng: range) -> PromptBatch:
    return PromptBatch(
        clips=tuple(prompts.clips[i] for i in rng), prompt_embeds=tuple(prompts.prompt_embeds[i] for i in rng)
    )
