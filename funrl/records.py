"""What a training step leaves in OUT/metrics.jsonl (`step_record`) and OUT/rollouts.jsonl (`rollout_record`)."""

from __future__ import annotations

import torch

from policy.messages import ScoredRollout


def step_record(scored, stats, groups: dict[str, float]) -> dict[str, float]:
    """Flat metrics of a step: each reward's mean/std, lengths, flat groups, learner stats."""
    rec: dict[str, float] = {}
    for name, values in scored.rewards.items():
        valid = values[~torch.isnan(values)]
        rec[f"reward.{name}.mean"] = float(valid.mean()) if valid.numel() else float("nan")
        rec[f"reward.{name}.std"] = float(valid.std()) if valid.numel() > 1 else float("nan")
    total = scored.rewards["total"]
    rec["groups.zero_variance_frac"] = float((total.amax(1) == total.amin(1)).float().mean())
    rec.update({f"groups.{k}": float(v) for k, v in groups.items()})
    rec["hyp.length.mean"] = float(scored.rollout.mask.sum(-1).mean())
    rec["hyp.truncated_frac"] = float(scored.rollout.truncated.float().mean())
    rec["time.vllm_generate"] = scored.rollout.seconds  # inside the engine(s): the rest is transport
    if stats is not None:
        rec.update(
            loss=stats.loss,
            kl=stats.kl,
            clip_frac=stats.clip_frac,
            ratio_mean=stats.ratio_mean,
            grad_norm=stats.grad_norm,
            lr=stats.lr,
        )
        rec.update({name: stats.extra[key] for name, key in LEARNER_EXTRAS.items() if key in stats.extra})
        rec["time.learner_compute"] = stats.seconds  # forward/backward/step inside the learner
    return rec


# metrics.jsonl name -> LearnStats.extra key: the sampler/learner agreement (before the update) and the
# per-token outliers of the update, which a mean hides (one token with KL 200 among 2,000)
LEARNER_EXTRAS = {
    "rollout.logprob_diff.mean": "logprob_diff_mean",
    "rollout.logprob_diff.max": "logprob_diff_max",
    "rollout.is_weight.min": "is_weight_min",
    "rollout.is_weight.max": "is_weight_max",
    "kl_max": "kl_max",
    "ratio_max": "ratio_max",
    "ratio_min": "ratio_min",
    "tis.weight_mean": "tis_weight_mean",
    "tis.clip_frac": "tis_clip_frac",
    "optimizer_steps": "optimizer_steps",
}


def rollout_record(scored: ScoredRollout) -> dict:
    """What OUT/rollouts.jsonl keeps of a step: each clip's audio, reference, hypotheses, total rewards and
    reward meta (language, keywords: what ``python -m rewards replay`` needs to rescore them)."""
    total = scored.rewards["total"]
    return {
        "clips": [
            {"audio": clip.audio, "ref": clip.text, "hyps": list(hyps), "total": total[i].tolist(), "meta": clip.meta()}
            for i, (clip, hyps) in enumerate(zip(scored.rollout.prompts.clips, scored.rollout.texts))
        ]
    }
