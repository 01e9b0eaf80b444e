"""funrl.syncs.make_syncs: which weight syncs a run gets, in which order, from its config (no actors: the syncs
only hold the handles they are given)."""

import pytest

from funrl.config import load_config
from funrl.syncs import EmbedderSync, LoraAdapterSync, ObjectStoreSync, make_syncs


@pytest.mark.parametrize(
    "finetune, train_encoder, lora_sync, want",
    [
        ("full", "false", "adapter", [("embedder", False, True), "object_store"]),  # the prompts' text table trains
        ("full", "true", "adapter", [("embedder", True, True), "object_store"]),
        ("lora", "false", "adapter", ["lora_adapter"]),  # nothing the embedding worker uses trains
        ("lora", "true", "adapter", [("embedder", True, False), "lora_adapter"]),
        ("lora", "false", "merged", ["object_store"]),  # the LoRA merged into full weights
        ("lora", "true", "merged", [("embedder", True, False), "object_store"]),
    ],
)
def test_each_finetune_mode_gets_its_engine_sync_after_the_embedder_sync(
    finetune, train_encoder, lora_sync, want, tmp_path
):
    overrides = [f"learner.finetune={finetune}", f"model.train_encoder={train_encoder}", f"run.out_dir={tmp_path}"]
    cfg = load_config(None, [*overrides, f"rollout.lora_sync={lora_sync}"])
    assert cfg.lora_adapter_sync == (want[-1] == "lora_adapter")  # what decides the engines' enable_lora
    engines: list = []
    syncs = make_syncs(cfg, "learner", "embedder", engines, "float32", 60.0)
    got = [(s.name, s.frontend, s.input_table) if isinstance(s, EmbedderSync) else s.name for s in syncs]
    assert got == want
    engine_sync = syncs[-1]
    assert isinstance(engine_sync, (ObjectStoreSync, LoraAdapterSync)) and engine_sync.feeds_engines
    assert engine_sync.engines is engines  # the cluster's own list: a restarted engine is seen
    assert not any(s.feeds_engines for s in syncs[:-1])


def test_collective_is_chosen_by_rollout_weight_sync_and_uses_gloo_without_gpus(tmp_path):
    from funrl.syncs import CollectiveSync

    cfg = load_config(None, ["rollout.weight_sync=collective", f"run.out_dir={tmp_path}"])
    sync = make_syncs(cfg, "learner", "embedder", [], "float32", 600.0)[-1]
    assert isinstance(sync, CollectiveSync) and sync.backend == "gloo" and sync.timeout_s == 300.0


def test_collective_sync_with_a_lora_adapter_is_a_config_error_naming_the_key_and_merged_lora_is_broadcast(tmp_path):
    from funrl.config import ConfigError
    from funrl.syncs import CollectiveSync

    with pytest.raises(ConfigError, match="rollout.lora_sync=adapter moves only its adapter") as err:
        load_config(None, ["rollout.weight_sync=collective", "learner.finetune=lora"])
    assert err.value.key == "rollout.weight_sync"
    merged = ["rollout.weight_sync=collective", "learner.finetune=lora", "rollout.lora_sync=merged"]
    cfg = load_config(None, [*merged, f"run.out_dir={tmp_path}"])
    assert isinstance(make_syncs(cfg, "learner", "embedder", [], "float32", 600.0)[-1], CollectiveSync)


def test_transfer_meter_sums_bytes_by_stage_in_mib_and_restarts_after_take():
    from funrl.cluster import TransferMeter

    meter = TransferMeter()
    meter.add("embed", 3 << 20)
    meter.add("generate", 1 << 19)
    meter.add("embed", 1 << 20)
    assert meter.take() == {"transfer.embed_mb": 4.0, "transfer.generate_mb": 0.5, "transfer.mb": 4.5}
    assert meter.take() == {"transfer.mb": 0.0}
