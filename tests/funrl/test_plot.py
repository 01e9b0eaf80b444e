import subprocess
import sys

from funrl.metrics import MetricsLogger
from funrl.plot import plot_run


def test_plot_writes_four_pngs_from_metrics(tmp_path):
    log = MetricsLogger(tmp_path, loggers=("jsonl",))
    for step in range(1, 6):
        log.log(
            step,
            {
                "reward.wer.mean": 0.1 * step,
                "reward.wer.std": 0.05,
                "kl": 0.01 * step,
                "clip_frac": 0.1,
                "loss": 1.0 / step,
                "time.generate": 1.0,
                "time.learn": 2.0,
                "time.step": 3.0,
            },
        )
    log.close()
    paths = plot_run(tmp_path)
    assert sorted(p.name for p in paths) == ["agreement.png", "rewards.png", "timing.png", "training.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_plot_cli_on_a_folder_without_metrics_exits_2_naming_it(tmp_path):
    res = subprocess.run([sys.executable, "-m", "funrl.plot", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 2
    assert "metrics.jsonl" in res.stderr and str(tmp_path) in res.stderr
