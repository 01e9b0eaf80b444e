import json
import os

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
    stale = tmp_path / "checkpoints" / ".tmp-step_000005-999"
    stale.mkdir(parents=True)
    mgr.save(6, {}, _payload("x"))
    assert not stale.exists()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_000006"]


def test_keep_last_below_one_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointManager(tmp_path, keep_last=0)
