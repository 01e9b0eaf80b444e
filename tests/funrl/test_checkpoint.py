import json
import os
import subprocess

import pytest

from funrl.checkpoint import COMPLETE, CheckpointManager


def _payload(text):
    def write(folder):
        (folder / "weights.txt").write_text(text)

    return write


def test_save_then_latest_returns_the_newest_complete_checkpoint(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    mgr.save(1, {"data": {"epoch": 0, "index": 4}}, _payload("a"))
    mgr.save(2, {"data": {"epoch": 0, "index": 8}}, _payload("b"))
    ckpt = mgr.latest()
    assert ckpt.step == 2
    assert (ckpt.path / "weights.txt").read_text() == "b"
    assert ckpt.trainer_state() == {"data": {"epoch": 0, "index": 8}, "step": 2}


def test_keep_last_prunes_older_checkpoints(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3, 4):
        mgr.save(step, {}, _payload(str(step)))
    assert [c.step for c in mgr.all()] == [3, 4]


def test_half_written_checkpoint_is_never_picked_up(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    mgr.save(1, {}, _payload("good"))

    def crash(folder):
        (folder / "weights.txt").write_text("partial")
        raise KeyboardInterrupt("killed mid-write")

    with pytest.raises(KeyboardInterrupt):
        mgr.save(2, {}, crash)
    assert mgr.latest().step == 1
    # A folder renamed into place without its COMPLETE marker is ignored too.
    fake = tmp_path / "checkpoints" / "step_000003"
    fake.mkdir()
    (fake / "trainer_state.json").write_text(json.dumps({"step": 3}))
    assert mgr.latest().step == 1
    (fake / COMPLETE).write_text("ok")
    assert mgr.latest().step == 3


def test_next_save_removes_stale_temporary_folders(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=2)
    gone = subprocess.Popen(["true"])  # a writer that has ended: its pid runs nothing (a fixed pid might)
    gone.wait()
    stale = tmp_path / "checkpoints" / f".tmp-step_000005-{gone.pid}"
    stale.mkdir(parents=True)
    mgr.save(6, {}, _payload("x"))
    assert not stale.exists()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_000006"]


def test_keep_last_below_one_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)


def test_latest_falls_back_past_a_torn_checkpoint_marked_complete(tmp_path, capsys):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    mgr.save(1, {}, _payload("a"))

    def torn(folder):
        (folder / "learner").mkdir()
        (folder / "learner" / "learner.json").write_text('{"updates": 2, "sched')  # cut mid-write

    mgr.save(2, {}, torn)
    assert [c.step for c in mgr.all()] == [1, 2]
    assert mgr.latest().step == 1
    assert "skipping checkpoint" in capsys.readouterr().err and "learner.json does not parse" in mgr.all()[1].damage()

    def empty(folder):
        (folder / "shard.distcp").write_bytes(b"")

    mgr.save(3, {}, empty)
    assert mgr.latest().step == 1 and "shard.distcp is empty" in mgr.all()[2].damage()


def test_pruning_skips_a_checkpoint_a_reader_holds_and_removes_it_later(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=1)
    first = mgr.save(1, {}, _payload("a"))
    with first.reading():
        mgr.save(2, {}, _payload("b"))
        assert (first.path / "weights.txt").read_text() == "a"  # still whole while read
    mgr.save(3, {}, _payload("c"))
    assert [c.step for c in mgr.all()] == [3] and not first.path.exists()


def test_stale_temp_folders_are_removed_only_when_their_writer_is_gone(tmp_path):
    import socket
    import subprocess
    import sys

    mgr = CheckpointManager(tmp_path)
    mgr.root.mkdir(parents=True)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    host = socket.gethostname()
    live_tmp = mgr.root / f".tmp-step_000005-{host}-{os.getppid()}"  # a live process (our parent)
    dead_tmp = mgr.root / f".tmp-step_000006-{host}-{dead}"
    other_host = mgr.root / f".tmp-step_000007-otherhost-{dead}"  # can't tell: left alone
    for folder in (live_tmp, dead_tmp, other_host):
        folder.mkdir()
    mgr.save(8, {}, _payload("x"))
    assert live_tmp.exists() and other_host.exists() and not dead_tmp.exists()


def test_run_lock_keeps_a_second_process_out_until_released(tmp_path):
    from funrl.checkpoint import RunLock, RunLockedError

    lock = RunLock(tmp_path)
    with pytest.raises(RunLockedError, match=f"{tmp_path} is in use by another FunRL process \\(pid {os.getpid()}"):
        RunLock(tmp_path)
    lock.release()
    with RunLock(tmp_path):
        pass


def _manifest(folder):
    """A valid one-clip manifest (the checks before the run folder is touched pass)."""
    import numpy as np
    import soundfile as sf

    sf.write(folder / "a.wav", np.zeros(8000, dtype=np.float32), 16000)
    (folder / "train.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "hi"}) + "\n")
    return folder / "train.jsonl"


def test_training_on_a_run_folder_another_process_holds_exits_2_naming_it(tiny_model_dir, tmp_path, capsys):
    from funrl.checkpoint import RunLock
    from funrl.train import main

    out = tmp_path / "run"
    with RunLock(out):
        code = main(
            [
                "--no-demo",
                f"model.path={tiny_model_dir}",
                f"data.train_manifest={_manifest(tmp_path)}",
                "run.clips_per_step=1",
                f"run.out_dir={out}",
            ]
        )
    assert code == 2 and "is in use by another FunRL process" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing written


def test_a_fresh_run_in_a_folder_with_an_earlier_runs_files_but_no_checkpoint_exits_2(tiny_model_dir, tmp_path, capsys):
    from funrl.train import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "eval_before.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    code = main(
        [
            "--no-demo",
            f"model.path={tiny_model_dir}",
            f"data.train_manifest={_manifest(tmp_path)}",
            "run.clips_per_step=1",
            f"run.out_dir={out}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "holds files of an earlier run (metrics.jsonl, eval_before.json)" in err, err
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'  # nothing dropped


def test_resume_override_the_checkpoint_rejects_leaves_config_yaml_unchanged(tiny_model_dir, tmp_path, capsys):
    from funrl.config import load_config, save_config
    from funrl.data import load_manifest, make_sampler
    from funrl.train import main

    out = tmp_path / "run"
    manifest = _manifest(tmp_path)
    cfg = load_config(
        None,
        [
            f"model.path={tiny_model_dir}",
            f"data.train_manifest={manifest}",
            "run.clips_per_step=1",
            f"run.out_dir={out}",
        ],
    )
    out.mkdir()
    save_config(cfg, out / "config.yaml")
    before = (out / "config.yaml").read_text()
    sampler = make_sampler(load_manifest(manifest), 1, {}, cfg.run.seed)
    CheckpointManager(out).save(3, {"data": sampler.state_dict()}, _payload("w"))
    code = main(["--resume", str(out), "run.seed=5"])  # the sampler state was saved with seed 0
    err = capsys.readouterr().err
    assert code == 2 and "does not match the checkpoint" in err and "seed=0" in err, err
    assert (out / "config.yaml").read_text() == before


def test_a_failed_write_removes_the_partial_copy_and_names_the_newest_intact_checkpoint(tmp_path):
    import errno

    from funrl.checkpoint import CheckpointWriteError

    mgr = CheckpointManager(tmp_path, keep_last=3)
    mgr.save(1, {"data": {}}, _payload("a"))

    def full_disk(folder):
        (folder / "shard.bin").write_bytes(b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(
        CheckpointWriteError, match=r"step 2 .*No space left on device.*still .*step_000001.*Free space"
    ):
        mgr.save(2, {"data": {}}, full_disk)
    assert sorted(p.name for p in mgr.root.iterdir()) == ["step_000001"]
    assert mgr.latest().step == 1


def test_a_write_failing_for_another_reason_does_not_advise_freeing_space(tmp_path):
    from funrl.checkpoint import CheckpointWriteError

    mgr = CheckpointManager(tmp_path, keep_last=3)

    def worker_died(folder):
        raise RuntimeError("learner rank 0 died: the actor is unavailable")

    with pytest.raises(
        CheckpointWriteError, match=r"rank 0 died.*no earlier checkpoint exists\. Fix that cause"
    ) as err:
        mgr.save(1, {"data": {}}, worker_died)
    assert "Free space" not in str(err.value)
