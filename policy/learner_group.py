"""`LearnerGroup`: the FSDP2 learner as one Ray actor per rank, in a placement group.

Bundles are ``{"CPU": 1}`` (or ``{"CPU": 1, "GPU": gpus_per_rank}``), packed onto as few nodes as possible;
a caller that places the rollout engines too (``funrl.placement``) passes its own group and bundle indices;
the rendezvous address is a free port on the node of bundle 0. Every rank's ``setup`` is launched before
any result is awaited (each blocks until all ranks join). Every other call is fanned out to all ranks (they
run collectives) and returns rank 0's result. An actor that dies or raises gives `WorkerError` naming the
rank, with its remote traceback; after a failure other than a NaN guard (which every rank raises together,
leaving the group usable) the group is marked broken and refuses further calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ray
from ray.util.placement_group import remove_placement_group

from policy.augment import AugmentConfig
from policy.config import LearnerConfig, ModelConfig
from policy.learner import Learner
from policy.messages import LearnStats, ScoredRollout
from policy.ports import node_address
from policy.ray_utils import WorkerError, get_named, in_bundle, remote_class, reserve_placement_group

__all__ = ["LearnerGroup", "WorkerError"]


class RolloutSender:
    """Sends weight buckets from learner rank 0 to rollout actors (``update_weights`` /
    ``finish_weight_update``); at most two buckets in flight. Built by the group, called inside rank 0."""

    def __init__(self, rollouts: Sequence[Any], timeout_s: float | None = None, version: int | None = None) -> None:
        self.rollouts = list(rollouts)
        self.timeout_s = timeout_s  # per engine answer; a hung engine is a WorkerTimeout naming it
        self.version = version  # the policy version the engines serve once the update is finished
        self._pending: list = []

    def __call__(self, bucket: list) -> None:
        ref = ray.put(bucket)
        self._wait()
        self._pending = [(f"rollout worker {i}", r.update_weights.remote(ref)) for i, r in enumerate(self.rollouts)]

    def finish(self) -> None:
        self._wait()
        get_named(
            [(f"rollout worker {i}", r.finish_weight_update.remote(self.version)) for i, r in enumerate(self.rollouts)],
            timeout_s=self.timeout_s,
        )

    def _wait(self) -> None:
        pending, self._pending = self._pending, []
        get_named(pending, timeout_s=self.timeout_s)


class LearnerGroup:
    """``num_ranks`` `Learner` actors (one per rank) running FSDP2 together; see the module doc."""

    def __init__(
        self,
        model_dir: str,
        model_cfg: ModelConfig,
        cfg: LearnerConfig,
        *,
        total_steps: int | None = None,
        max_audio_seconds: float | None = 30.0,
        temperature: float = 1.0,
        max_new_tokens: int | None = None,
        placement_strategy: str = "PACK",
        placement_timeout_s: float = 300.0,
        call_timeout_s: float | None = None,
        runtime_env: dict | None = None,
        placement: tuple[Any, Sequence[int]] | None = None,
        augment: AugmentConfig | None = None,
    ) -> None:
        if not ray.is_initialized():
            raise RuntimeError("LearnerGroup needs a running Ray (ray.init(...) or ray.init(address=...)) first")
        self.cfg = cfg
        self.num_ranks = cfg.num_ranks
        self.call_timeout_s = None  # setup (model load, process groups) may take long: no timeout
        self._broken: str | None = None
        self.actors: list[Any] = []
        own = placement is None  # else: bundles of the caller's group (e.g. shared with rollout engines)
        bundles: Sequence[int]
        if placement is None:
            pg, bundles = self._placement_group(cfg, placement_strategy, placement_timeout_s), range(cfg.num_ranks)
        else:
            pg, bundles = placement
        self.pg = pg if own else None  # kill() frees only a group of our own
        if len(bundles) != cfg.num_ranks:
            raise ValueError(f"placement gives {len(bundles)} bundles for {cfg.num_ranks} learner ranks")
        try:
            self._rank0_bundle = in_bundle(pg, bundles[0])
            addr, port = self.master_addr, self.master_port = self.free_address()
            options: dict[str, Any] = {"num_cpus": 1, "num_gpus": cfg.gpus_per_rank}
            if runtime_env:
                options["runtime_env"] = runtime_env
            self.actors = [
                remote_class(Learner, scheduling_strategy=in_bundle(pg, bundles[r]), **options).remote(
                    model_dir,
                    model_cfg,
                    cfg,
                    r,
                    self.num_ranks,
                    addr,
                    port,
                    total_steps=total_steps,
                    max_audio_seconds=max_audio_seconds,
                    temperature=temperature,
                    max_new_tokens=max_new_tokens,
                    augment=augment,
                )
                for r in range(self.num_ranks)
            ]
            self.info = self._call("setup")
            self.call_timeout_s = call_timeout_s
        except BaseException:
            self.kill()
            raise

    @staticmethod
    def _placement_group(cfg: LearnerConfig, strategy: str, timeout_s: float):
        bundle = {"CPU": 1.0}
        if cfg.gpus_per_rank > 0:
            bundle["GPU"] = float(cfg.gpus_per_rank)
        return reserve_placement_group(
            [bundle] * cfg.num_ranks,
            strategy,
            timeout_s,
            f"{cfg.num_ranks} learner ranks of {bundle} (learner.num_ranks, learner.gpus_per_rank)",
        )

    # ------------------------------------------------------------------------------------- fan-out
    def _call(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """Call ``method`` on every rank; results by rank."""
        if self._broken:
            raise WorkerError(f"the learner group is unusable after an earlier failure: {self._broken}")
        refs = [(f"learner rank {r}", getattr(a, method).remote(*args, **kwargs)) for r, a in enumerate(self.actors)]
        try:
            return get_named(refs, timeout_s=self.call_timeout_s)
        except WorkerError as err:
            # a NaN guard (every rank stops before its optimizer step) or a rollout engine failing while rank 0
            # sends it weights (every rank gathers to the end): the group is still consistent
            if isinstance(err.cause, (FloatingPointError, WorkerError)) and self._all_settle(refs):
                raise
            self._broken = f"{err.actor} in {method}(): {err.cause!r}" if err.cause else str(err).splitlines()[0]
            raise

    @staticmethod
    def _all_settle(refs: list[tuple[str, Any]], timeout_s: float = 60.0) -> bool:
        ready, _ = ray.wait([r for _, r in refs], num_returns=len(refs), timeout=timeout_s)
        return len(ready) == len(refs)

    def update(self, batch: ScoredRollout, max_lag: int = 0) -> LearnStats:
        """One GRPO update on every rank (the batch goes to the object store once); rank 0's stats."""
        return self._call("update", ray.put(batch), max_lag)[0]

    def logprobs(self, batch: Any, reference: bool = False) -> Any:
        """``[B, G, T]`` log-probs of a RolloutBatch / ScoredRollout under the policy (or the reference)."""
        return self._call("logprobs", ray.put(batch), reference)[0]

    def named_weights_for_sync(self, dtype: str = "float32") -> list[tuple[str, Any]]:
        """The full (LoRA: merged) LLM weights under vLLM names, gathered by rank 0, cast to ``dtype``."""
        return self._call("gather_weights", dtype)[0]

    def frontend_weights_for_sync(self) -> list[tuple[str, Any]]:
        """The trained frontend's parameters (names of ``model.frontend``), gathered by rank 0 — for the
        embedding worker's ``load_frontend_weights`` when ``model.train_encoder`` is on."""
        return self._call("gather_frontend_weights")[0]

    def input_embeddings_for_sync(self) -> Any:
        """The LLM's trained input embedding table (rank 0's, fp32) — for the embedding worker's
        ``load_input_embeddings`` under full fine-tuning."""
        return self._call("gather_input_embeddings")[0]

    def push_weights(
        self, rollouts: Sequence[Any], bucket_bytes: int, dtype: str = "float32", version: int | None = None
    ) -> dict[str, float]:
        """Stream full weights from rank 0 straight to the rollout actors (``update_weights`` per bucket,
        then ``finish_weight_update(version)``), each tensor cast to ``dtype``: pass the rollout engine's dtype
        (``"bfloat16"`` halves the bytes; vLLM converts whatever arrives to its own dtype anyway). Returns rank
        0's seconds / buckets / bytes (as sent)."""
        # the sender's wait is shorter than the group's, so a hung engine is named, not rank 0
        sender_timeout = None if self.call_timeout_s is None else self.call_timeout_s / 2
        sender = RolloutSender(rollouts, sender_timeout, version)
        return self._call("sync_weights", sender, bucket_bytes, dtype)[0]

    def free_address(self) -> tuple[str, int]:
        """An address (node IP, free port) on learner rank 0's node, e.g. for the weight group's store."""
        return ray.get(ray.remote(num_cpus=0)(node_address).options(scheduling_strategy=self._rank0_bundle).remote())

    def join_weight_group(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> None:
        """Rank 0 joins the engines' weight group (`policy.weight_broadcast`) as its rank 0."""
        self._call("join_weight_group", host, port, world_size, backend, timeout_s)

    def weight_meta(self, dtype: str = "float32") -> list:
        """(name, shape, dtype) of every tensor `broadcast_weights` sends, in order."""
        return self._call("weight_meta", dtype)[0]

    def broadcast_weights(self, bucket_bytes: int, dtype: str = "float32") -> dict[str, float]:
        """Rank 0 broadcasts the full weights to the weight group in buckets; rank 0's seconds / buckets / bytes."""
        return self._call("broadcast_weights", bucket_bytes, dtype)[0]

    def export_adapter(self, folder: str) -> str:
        """LoRA: write the adapter as a peft folder at ``folder`` (rank 0 writes); returns its path."""
        return self._call("export_adapter", str(folder))[0]

    def save_model(self, folder: str, *, llm_only: bool = False, dtype: str = "float32") -> str:
        """Write the trained model as a plain model folder in its own format (`Learner.save_model`; rank 0
        writes); ``llm_only``: the LLM alone as an HF causal-LM folder. Returns the folder."""
        return self._call("save_model", str(folder), llm_only=llm_only, dtype=dtype)[0]

    def save_checkpoint(self, folder: str) -> str:
        return self._call("save_checkpoint", str(folder))[0]

    def load_checkpoint(self, folder: str) -> dict[str, Any]:
        return self._call("load_checkpoint", str(folder))[0]

    # ------------------------------------------------------------------------------------ lifecycle
    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Destroy the process groups, then end the actors and free the placement group."""
        if self.actors and not self._broken:
            try:
                refs = [a.shutdown.remote() for a in self.actors]
                ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
            except Exception:  # noqa: BLE001 - the actors are killed next anyway
                pass
        self.kill()

    def kill(self) -> None:
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass
        self.actors = []
        if getattr(self, "pg", None) is not None:
            try:
                remove_placement_group(self.pg)
            except Exception:  # noqa: BLE001
                pass
            self.pg = None

    def __enter__(self) -> "LearnerGroup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
