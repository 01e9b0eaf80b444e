"""``python -m funrl.plot RUN_DIR``: PNG curves from RUN_DIR/metrics.jsonl.

Writes RUN_DIR/plots/{rewards,training,timing}.png: each reward's mean (with its
std band), WER, KL, clip fraction, loss and the seconds spent in each stage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from funrl.extras import MissingExtra, require
from funrl.metrics import read_metrics


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get(key) is not None:
            xs.append(r["step"])
            ys.append(r[key])
    return xs, ys


def _panel(ax, records, keys, title, band=False):
    drawn = False
    for key in keys:
        xs, ys = _series(records, key)
        if not xs:
            continue
        ax.plot(xs, ys, label=key, marker="." if len(xs) < 30 else None)
        if band:
            _, sd = _series(records, key.replace(".mean", ".std"))
            if len(sd) == len(ys):
                ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)], alpha=0.15)
        drawn = True
    ax.set_title(title)
    ax.set_xlabel("step")
    if drawn:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def plot_run(run_dir: str | Path) -> list[Path]:
    matplotlib = require("matplotlib", "plot", "python -m funrl.plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a FunRL run folder?")
    records = read_metrics(path)
    if not records:
        raise ValueError(f"{path} has no records yet")
    keys = sorted({k for r in records for k in r})
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []

    reward_keys = [k for k in keys if k.startswith("reward.") and k.endswith(".mean")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    _panel(axes[0], records, reward_keys, "rewards (mean ± std)", band=True)
    _panel(axes[1], records, [k for k in keys if k.startswith("eval.")], "evaluation")
    written.append(_save(fig, out_dir / "rewards.png"))

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    _panel(axes[0], records, ["kl"], "KL to reference")
    _panel(axes[1], records, ["clip_frac", "groups.zero_variance_frac"], "clip fraction / flat groups")
    _panel(axes[2], records, ["loss", "hyp.length.mean"], "loss / hypothesis length")
    written.append(_save(fig, out_dir / "training.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    _panel(
        axes[0],
        records,
        ["rollout.logprob_diff.mean", "rollout.logprob_diff.max"],
        "|vLLM - learner| log-prob of sampled tokens",
    )
    _panel(axes[1], records, ["kl_max", "ratio_max", "rollout.is_weight.max"], "per-token outliers of the update")
    written.append(_save(fig, out_dir / "agreement.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    _panel(ax, records, [k for k in keys if k.startswith("time.") and k != "time.step"], "seconds per stage")
    written.append(_save(fig, out_dir / "timing.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m funrl.plot", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("run_dir", help="a run folder (holds metrics.jsonl)")
    args = p.parse_args(argv)
    try:
        for path in plot_run(args.run_dir):
            print(path)
    except (FileNotFoundError, ValueError, MissingExtra) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
