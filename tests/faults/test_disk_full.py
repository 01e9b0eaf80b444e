"""Disk full while a checkpoint is written: `python -m funrl.train` with its run folder on a small tmpfs (a
real file system that runs out of space, mounted in a private mount namespace: `unshare`), then `--resume` once
space is freed. The partial checkpoint is removed, the run stops with exit 1 naming the newest intact checkpoint,
and the resumed run continues from it with a continuous step counter."""

import os
import shutil
import subprocess
import sys

import pytest
from train_runs import ROOT, as_args, jsonl, tiny_run

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.vllm, pytest.mark.slow]

SCRIPT = """
set -u
mount -t tmpfs -o size=10m tmpfs "$DISK" || exit 90
"$PY" -m funrl.train --no-demo "$@" > "$LOGS/first.log" 2>&1
echo $? > "$LOGS/first.rc"
cp -r "$DISK/run/checkpoints" "$LOGS/checkpoints_after_first" 2>/dev/null
mount -o remount,size=200m "$DISK"                      # space freed
"$PY" -m funrl.train --resume "$DISK/run" > "$LOGS/resume.log" 2>&1
echo $? > "$LOGS/resume.rc"
cp "$DISK/run/metrics.jsonl" "$LOGS/"
ls -a "$DISK/run/checkpoints" > "$LOGS/checkpoints_at_end.txt"
"""


def _private_mounts_work() -> bool:
    return (
        shutil.which("unshare") is not None
        and subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True).returncode
        == 0
    )


@pytest.mark.skipif(not _private_mounts_work(), reason="needs `unshare -rm` and tmpfs mounts (util-linux, Linux)")
def test_disk_full_during_a_checkpoint_removes_the_partial_copy_exits_1_and_resume_continues(
    tiny_model_dir, small_demo_data, tmp_path
):
    disk, logs = tmp_path / "disk", tmp_path / "logs"
    disk.mkdir()
    logs.mkdir()
    extra = {"run.steps": 3, "run.save_every": 1, "run.keep_last": 3, "run.save_model": "false"}
    args = tiny_run(tiny_model_dir, small_demo_data.manifest("rl_train"), disk / "run", extra)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        DISK=str(disk),
        LOGS=str(logs),
        PY=sys.executable,
    )
    env.pop("RAY_AUTH_MODE", None)
    subprocess.run(
        ["unshare", "-rm", "bash", "-c", SCRIPT, "funrl", *as_args(args)],
        cwd=ROOT,
        env=env,
        timeout=900,
        check=True,
    )
    first = (logs / "first.log").read_text()
    # 10 MB: the LLM exported for vLLM (2 MB) and one checkpoint (5.5 MB) fit, a second checkpoint does not
    assert (logs / "first.rc").read_text().strip() == "1", first[-3000:]
    # torch.save in the learner rank reports a full disk as a RuntimeError ("unexpected pos"), not ENOSPC: the
    # message says what failed and how much space is left
    assert "error: writing the checkpoint of step 2" in first and "MiB free there" in first, first[-3000:]
    assert "the newest checkpoint is still" in first and "step_000001" in first
    assert sorted(p.name for p in (logs / "checkpoints_after_first").iterdir()) == ["step_000001"]  # no partial

    resumed = (logs / "resume.log").read_text()
    assert (logs / "resume.rc").read_text().strip() == "0", resumed[-3000:]
    assert "at step 2" in resumed
    assert [m["step"] for m in jsonl(logs / "metrics.jsonl")] == [1, 2, 3]
    assert not any(".tmp-" in n for n in (logs / "checkpoints_at_end.txt").read_text().split())
