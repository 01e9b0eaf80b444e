"""policy.learner_group with a real local Ray: 2 FSDP2 learner actors (gloo) in a placement group, against the
plain single-process GRPO reference; weight streaming, adapter export, checkpoint round trip, failures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from learner_ranks import BucketRecorder, learner_cfg, make_batch, reference_run

from policy.config import ModelConfig
from policy.models import load_audio_llm

ray = pytest.importorskip("ray")
from policy.learner_group import LearnerGroup, WorkerError  # noqa: E402
from policy.ray_utils import remote_class  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
BUCKET = 200_000  # bytes: the tiny LLM (1.6 MB) arrives in several buckets


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for this module (or the one already running); the test helper module travels by value."""
    import learner_ranks

    ray.cloudpickle.register_pickle_by_value(learner_ranks)
    own = not ray.is_initialized()
    if own:
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}},
        )
    yield
    if own:
        ray.shutdown()


def _group(model_dir, **kw) -> LearnerGroup:
    return LearnerGroup(str(model_dir), ModelConfig(path=str(model_dir)), learner_cfg(num_ranks=2, **kw))


def _np(named) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in named}


@pytest.fixture(scope="module")
def full_run(ray_local, tiny_model_dir, tmp_path_factory) -> dict:
    """Group A: update, gather, push, NaN guard, save, update. Group B: load, the same update, then a kill."""
    ck = tmp_path_factory.mktemp("learner_ck") / "ck"
    b1, b2 = make_batch(1), make_batch(2)
    out: dict = {}
    with _group(tiny_model_dir, warmup_steps=3) as a:  # lr x 1/3, 2/3, then 1
        out["info"] = a.info
        out["stats1"] = a.update(b1)
        out["weights1"] = _np(a.named_weights_for_sync())
        recorder = remote_class(BucketRecorder, num_cpus=0).remote()
        out["push"] = a.push_weights([recorder], BUCKET, version=1)
        out["received"] = ray.get(recorder.received.remote())
        try:
            a.update(make_batch(1, nan_adv=True))
        except WorkerError as err:
            out["nan_error"] = err
        a.save_checkpoint(str(ck))
        out["stats2"] = [a.update(b2), a.update(b1)]
        out["weights2"] = _np(a.named_weights_for_sync())
    with _group(tiny_model_dir, warmup_steps=3) as b:
        out["loaded"] = b.load_checkpoint(str(ck))
        out["stats2_resumed"] = [b.update(b2), b.update(b1)]
        out["weights2_resumed"] = _np(b.named_weights_for_sync())
        ray.kill(b.actors[1])
        for key in ("killed_error", "after_kill_error"):
            try:
                b.update(b2)
            except WorkerError as err:
                out[key] = err
    out["ck"] = ck
    return out


def test_group_update_and_gathered_weights_equal_single_process_reference(full_run, tiny_model_dir):
    assert [i["rank"] for i in full_run["info"]] == [0, 1]
    # the group warms up over 3 updates: its first update runs at a third of the LR
    (losses, _), weights = reference_run(tiny_model_dir, learner_cfg(lr=1e-4 / 3), [make_batch(1)])
    assert full_run["stats1"].lr == pytest.approx(1e-4 / 3)
    assert full_run["stats1"].loss == pytest.approx(losses[0], abs=1e-5)
    got = full_run["weights1"]
    assert got.keys() == weights.keys()
    assert max(float(np.abs(got[k] - weights[k].numpy()).max()) for k in weights) <= 1e-5


def test_push_weights_streams_bounded_buckets_in_state_dict_order(full_run):
    buckets, finished, versions = full_run["received"]
    want = full_run["weights1"]
    names = [n for b in buckets for n, _ in b]
    assert names == list(want) and finished == 1 and len(buckets) == full_run["push"]["buckets"] > 2
    assert versions == [1]  # the policy version the engine serves once the update is finished
    for b in buckets:
        assert len(b) == 1 or sum(t.nbytes for _, t in b) <= BUCKET
    assert all(np.array_equal(t, want[n]) for b in buckets for n, t in b)


def test_nan_in_advantages_gives_worker_error_and_the_group_goes_on(full_run):
    err = full_run["nan_error"]
    assert isinstance(err.cause, FloatingPointError) and err.actor.startswith("learner rank ")
    assert "FloatingPointError" in str(err) and "advantages contain NaN" in str(err)
    assert np.isfinite(full_run["stats2"][0].loss)  # the same group updated again afterwards


def test_checkpoint_loaded_by_a_new_group_gives_the_identical_next_update(full_run):
    ck = full_run["ck"]
    assert (ck / "dcp").is_dir() and (ck / "rng_rank0.json").is_file() and (ck / "rng_rank1.safetensors").is_file()
    assert json.loads((ck / "learner.json").read_text())["updates"] == 1 and full_run["loaded"]["world_size"] == 2
    assert [s.loss for s in full_run["stats2_resumed"]] == [s.loss for s in full_run["stats2"]]
    lrs = [s.lr for s in full_run["stats2_resumed"]]  # the scheduler went on where it stopped
    assert lrs == [s.lr for s in full_run["stats2"]] and lrs == pytest.approx([2e-4 / 3, 1e-4])
    a, b = full_run["weights2"], full_run["weights2_resumed"]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], full_run["weights1"][k]) for k in a)  # step 2 changed the weights


def test_killed_actor_gives_worker_error_naming_its_rank_and_the_group_refuses_more(full_run):
    err = full_run["killed_error"]
    assert err.actor == "learner rank 1" and "died" in str(err)
    assert "unusable after an earlier failure" in str(full_run["after_kill_error"])


def test_lora_group_exports_adapter_and_resumes_from_checkpoint(ray_local, tiny_model_dir, tmp_path):
    import transformers
    from peft import PeftModel

    b1, b2 = make_batch(1), make_batch(2)
    with _group(tiny_model_dir, finetune="lora") as a:
        a.update(b1)
        merged1 = _np(a.named_weights_for_sync())
        folder = Path(a.export_adapter(str(tmp_path / "adapter")))
        a.save_checkpoint(str(tmp_path / "ck"))
        want = a.update(b2)
        weights = _np(a.named_weights_for_sync())
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir / "llm", local_files_only=True)
    peft_merged = PeftModel.from_pretrained(base, folder).merge_and_unload().state_dict()
    assert max(float(np.abs(peft_merged[k].numpy() - merged1[k]).max()) for k in merged1) <= 1e-6
    start = dict(load_audio_llm(tiny_model_dir).llm_state_dict())
    assert any(not np.array_equal(merged1[k], start[k].numpy()) for k in merged1)  # the adapter is not a no-op
    with _group(tiny_model_dir, finetune="lora") as b:
        b.load_checkpoint(str(tmp_path / "ck"))
        got = b.update(b2)
        resumed = _np(b.named_weights_for_sync())
    assert got.loss == want.loss and all(np.array_equal(weights[k], resumed[k]) for k in weights)
