"""scripts/bench_slam_asr.py: a stage a killed bench left midway resumes from its checkpoint, a finished one not."""

from __future__ import annotations

from funrl.checkpoint import CheckpointManager
from tests.script_loader import load_script

bench = load_script("bench_slam_asr")
ARGS = ["-m", "funrl.sft", "--config", "recipe.yaml", "model.path=m", "run.out_dir=OUT", "optim.minutes=5.0"]


def test_a_stage_with_no_checkpoint_starts_fresh_and_one_with_a_checkpoint_resumes_with_the_same_overrides(tmp_path):
    out = tmp_path / "sft"
    assert bench.resumed(ARGS, out) == ARGS and not bench._unfinished(out)
    CheckpointManager(out).save(4, {"finished": False}, lambda tmp: None)
    assert bench.resumed(ARGS, out) == ["-m", "funrl.sft", "--resume", str(out), "model.path=m", "optim.minutes=5.0"]
    assert bench._unfinished(out)  # stopped at step 4: run it again (resumed)


def test_an_sft_stage_whose_newest_checkpoint_is_its_last_step_is_finished(tmp_path):
    out = tmp_path / "sft"
    ckpts = CheckpointManager(out)
    ckpts.save(4, {"finished": False}, lambda tmp: None)
    ckpts.save(6, {"finished": True}, lambda tmp: None)
    assert not bench._unfinished(out)
    (out / "checkpoints/step_000006/COMPLETE").unlink()  # torn: the newest intact one is step 4's
    assert bench._unfinished(out)
