"""Weight syncs, one module per strategy behind one interface (`WeightSync`): `Cluster.sync` pushes the learner's
new weights through each sync of the run, in order, with the policy version they become.

- `embedder.EmbedderSync`: the embedding workers' frontend / input embedding table, when the learner trains them;
- `object_store.ObjectStoreSync`: full fine-tuning, bucketed full weights to every vLLM engine through Ray's
  object store (``rollout.weight_sync=object_store``);
- `collective.CollectiveSync`: full fine-tuning, the same buckets broadcast from learner rank 0 over a gloo /
  NCCL group of its own (``rollout.weight_sync=collective``);
- `lora_adapter.LoraAdapterSync`: LoRA, the adapter folder to every engine (``rollout.lora_sync=adapter``); with
  ``rollout.lora_sync=merged`` the LoRA is merged into full weights, moved as full fine-tuning's are.

`make_syncs` is the one place that chooses them from the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from funrl.config import TrainConfig
from funrl.syncs.base import WeightSync
from funrl.syncs.collective import CollectiveSync
from funrl.syncs.embedder import EmbedderSync
from funrl.syncs.lora_adapter import LoraAdapterSync
from funrl.syncs.object_store import ObjectStoreSync

__all__ = ["CollectiveSync", "EmbedderSync", "LoraAdapterSync", "ObjectStoreSync", "WeightSync", "make_syncs"]


def make_syncs(
    cfg: TrainConfig, learner: Any, embedders: list, engines: list, engine_dtype: str, timeout_s: float | None
) -> list[WeightSync]:
    """The run's syncs in the order `Cluster.sync` runs them: the embedding workers first (if the learner trains
    anything it embeds with), then the engines."""
    full = cfg.learner.finetune == "full"
    syncs: list[WeightSync] = []
    if cfg.model.train_encoder or full:
        syncs.append(EmbedderSync(learner, embedders, cfg.model.train_encoder, full, timeout_s))
    if cfg.lora_adapter_sync:
        syncs.append(LoraAdapterSync(learner, engines, Path(cfg.run.out_dir) / "rollout_lora", timeout_s))
        return syncs
    r = cfg.rollout  # full weights (LoRA merged into them when learner.finetune=lora)
    if r.weight_sync == "collective":
        backend = "nccl" if r.gpus_per_worker > 0 and cfg.learner.gpus_per_rank > 0 else "gloo"
        # the group's collectives wait at most half a call timeout, so an engine that stops answering is named
        group_timeout = (timeout_s or 1800.0) / 2
        syncs.append(CollectiveSync(learner, engines, r.sync_bucket_bytes, engine_dtype, backend, group_timeout))
    else:
        syncs.append(ObjectStoreSync(learner, engines, r.sync_bucket_bytes, engine_dtype))
    return syncs
