"""Audio checked before any worker starts: every bad file of a manifest named at once (MANIFEST:LINE: audio:),
or skipped with data.on_bad_audio=skip."""

import json

import numpy as np
import pytest
import soundfile as sf

from funrl.audio_check import check_clips
from funrl.data import ManifestError, load_manifest


@pytest.fixture()
def manifest(tmp_path):
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "good.wav", 0.1 * rng.standard_normal(8000).astype(np.float32), 16000)
    (tmp_path / "text.wav").write_text("this is not audio\n")
    sf.write(tmp_path / "long.wav", np.zeros(16000 * 40, dtype=np.int16), 16000)  # 40 s
    sf.write(tmp_path / "tiny.wav", np.zeros(100, dtype=np.float32), 16000)  # 100 samples
    nan = 0.1 * rng.standard_normal(8000).astype(np.float32)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    sf.write(tmp_path / "corrupt.flac", 0.1 * rng.standard_normal(32000).astype(np.float32), 16000)
    raw = bytearray((tmp_path / "corrupt.flac").read_bytes())
    raw[len(raw) // 2 :] = bytes(len(raw) - len(raw) // 2)  # body zeroed
    (tmp_path / "corrupt.flac").write_bytes(bytes(raw))
    names = ["good.wav", "text.wav", "long.wav", "tiny.wav", "nan.wav", "corrupt.flac", "good.wav"]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"audio": n, "text": "hi"}) + "\n" for n in names))
    return path


def test_every_bad_file_is_named_with_its_manifest_line(manifest):
    with pytest.raises(ManifestError) as info:
        check_clips(load_manifest(manifest), 0.05, 30.0)
    lines = info.value.errors
    expect = {
        2: "cannot read audio",
        3: "40.00 s long, over data.max_audio_seconds=30",
        4: "0.006 s long, under",
        5: "NaN/inf samples",
        6: "does not decode",
    }
    assert len(lines) == len(expect) + 1 and "on_bad_audio=skip" in lines[-1]
    for line, (no, words) in zip(lines, expect.items()):
        assert line.startswith(f"{manifest.absolute()}:{no}: audio: ") and words in line, line


def test_skip_leaves_bad_clips_out_and_names_each(manifest, capsys):
    kept = check_clips(load_manifest(manifest), 0.05, 30.0, on_bad="skip")
    assert [c.line for c in kept] == [1, 7]
    assert capsys.readouterr().err.count("[funrl] skipping") == 5


def test_a_long_file_is_rejected_by_its_header_without_decoding(tmp_path, monkeypatch):
    path = tmp_path / "hour.wav"
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        for _ in range(60):
            f.write(np.zeros(16000 * 60, dtype=np.int16))  # 60 min, 115 MB
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "hour.wav", "text": "x"}) + "\n")
    decoded = []
    real_read = sf.read
    monkeypatch.setattr(sf, "read", lambda *a, **k: decoded.append(a) or real_read(*a, **k))  # a spy, not a stub
    with pytest.raises(ManifestError, match="3600.00 s long"):
        check_clips(load_manifest(tmp_path / "m.jsonl"), 0.05, 30.0)
    assert decoded == []  # the header said 60 min: the 115 MB were never decoded


def test_training_with_bad_audio_exits_2_before_any_worker_starts(manifest, tiny_model_dir, tmp_path, capsys):
    from funrl.train import main

    code = main(
        [
            "--no-demo",
            f"model.path={tiny_model_dir}",
            f"data.train_manifest={manifest}",
            f"run.out_dir={tmp_path / 'run'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "text.wav" in err and "corrupt.flac" in err and not (tmp_path / "run").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_training_with_prompts_longer_than_max_model_len_exits_2_naming_the_clips_before_the_engines_start(
    small_demo_data, tiny_model_dir, tmp_path
):
    import subprocess
    import sys

    out = tmp_path / "run"
    args = [
        f"model.path={tiny_model_dir}",
        f"data.train_manifest={small_demo_data.manifest('rl_train')}",
        "rollout.max_model_len=24",
        "rollout.max_new_tokens=8",
        f"run.out_dir={out}",
        "ray.num_cpus=3",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "funrl.train", "--no-demo", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "rl_train.jsonl:1: audio:" in proc.stderr and "exceeds rollout.max_model_len=24" in proc.stderr
    assert "Traceback" not in proc.stderr.split("error:")[-1]
    assert not (out / "rollout_llm").exists()  # the LLM was never exported for vLLM: no engine started
