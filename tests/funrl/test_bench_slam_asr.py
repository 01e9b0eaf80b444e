"""scripts/bench_slam_asr.py: a stage a killed bench left midway resumes from its checkpoint, a finished one not
unless asked to go further (more GRPO steps, and the control to GRPO's new minutes)."""

from __future__ import annotations

import json

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


def test_how_far_a_grpo_and_an_sft_stage_got_is_read_from_their_logs_and_checkpoints(tmp_path):
    grpo, control = tmp_path / "grpo", tmp_path / "control"
    assert bench.grpo_steps_done(grpo) == 0 and bench.sft_minutes_done(control) == 0.0
    grpo.mkdir()
    (grpo / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "time.step": 30.0}) + "\n" for s in (1, 2, 80)))
    assert bench.grpo_steps_done(grpo) == 80  # --grpo-steps 200 then resumes it
    CheckpointManager(control).save(1055, {"finished": True, "elapsed_s": 2488.2}, lambda tmp: None)
    assert bench.sft_minutes_done(control) == 2488.2 / 60  # below GRPO's new minutes: the control resumes


def test_reports_of_a_stage_that_goes_further_are_dropped_to_be_made_again(tmp_path):
    reports = [tmp_path / "eval_test.json", tmp_path / "real_SFT_control.json", tmp_path / "never_made.json"]
    for r in reports[:2]:
        r.write_text("{}")
    bench.drop_reports(reports)
    assert not any(r.exists() for r in reports)


def test_peak_memory_is_printed_only_when_a_stage_ran_under_the_sampler(capsys):
    stages = {"time.embed": 0.9, "time.generate": 16.8, "time.sync": 1.3}
    bench.print_stages(stages, 1800.0, 3 * 2**30, 2**30)
    out = capsys.readouterr().out
    assert "LoRA sync 1300 ms; GRPO steps 30.0 min" in out and "RSS 3.00 GiB, PSS 1.00 GiB" in out
    bench.print_stages(stages, 1800.0, None, None)  # every stage was done before: the driver alone was sampled
    out = capsys.readouterr().out
    assert "peak memory: not measured" in out and "GiB" not in out
