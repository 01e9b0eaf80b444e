"""Weight syncs, one module per strategy behind one interface (`WeightSync`): `Cluster.sync` pushes the learner's
new weights through each sync of the run, in order, with the policy version they become.

- `embedder.EmbedderSync`: the embedding worker's frontend / input embedding table, when the learner trains them;
- `object_store.ObjectStoreSync`: full fine-tuning, bucketed full weights to every vLLM engine;
- `lora_adapter.LoraAdapterSync`: LoRA, the adapter folder to every engine.

`make_syncs` is the one place that chooses them from the config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from funrl.config import TrainConfig
from funrl.syncs.base import WeightSync
from funrl.syncs.embedder import EmbedderSync
from funrl.syncs.lora_adapter import LoraAdapterSync
from funrl.syncs.object_store import ObjectStoreSync

__all__ = ["EmbedderSync", "LoraAdapterSync", "ObjectStoreSync", "WeightSync", "make_syncs"]


def make_syncs(
    cfg: TrainConfig, learner: Any, embedder: Any, engines: list, engine_dtype: str, timeout_s: float | None
) -> list[WeightSync]:
    """The run's syncs in the order `Cluster.sync` runs them: the embedding worker first (if the learner trains
    anything it embeds with), then the engines."""
    full = cfg.learner.finetune == "full"
    syncs: list[WeightSync] = []
    if cfg.model.train_encoder or full:
        syncs.append(EmbedderSync(learner, embedder, cfg.model.train_encoder, full, timeout_s))
    if full:
        syncs.append(ObjectStoreSync(learner, engines, cfg.rollout.sync_bucket_bytes, engine_dtype))
    else:
        syncs.append(LoraAdapterSync(learner, engines, Path(cfg.run.out_dir) / "rollout_lora", timeout_s))
    return syncs
