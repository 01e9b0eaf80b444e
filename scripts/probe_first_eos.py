"""Can GRPO find the empty answer on noise? `python scripts/probe_first_eos.py MODEL MANIFEST [--group 8]`

GRPO's hallucination reward can teach a model to answer a noise-only clip with nothing only if some of the G
hypotheses it samples for that clip are empty; otherwise it can only make the text shorter. A hypothesis is
empty when the first token sampled ends the completion, so for each noise-only clip of MANIFEST (``text: ""``)
this computes p = P(first token is an end-of-completion token | prompt) under MODEL (a model folder, at sampling
temperature 1), and from it 1 - (1 - p)^G, the chance that a group of G samples holds an empty one. Prints the
quantiles of p and the expected share of noise groups with an empty sample; ``--json`` writes every clip's p.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from funrl.data import load_manifest
from policy.models import AudioLLM, load_audio_llm
from policy.models.audio import load_audio


def first_eos_prob(model: AudioLLM, wave: np.ndarray, context: str | None) -> float:
    """P(the first completion token is one of the model's end-of-completion tokens) for one clip."""
    prompt = model.build_prompt_embeds(model.embed_audio(model.audio_features([wave])), [context])
    ends = model.eos_token_ids
    ids = torch.tensor(ends, dtype=torch.long)[:, None]  # [E, 1]: each end token as a one-token completion
    logp = model.sequence_logprobs(prompt * len(ends), ids, torch.ones_like(ids))  # [E, 1]
    return float(logp.exp().sum())


def group_has_empty(p: float, group: int) -> float:
    """1 - (1 - p)^group: the chance that ``group`` samples hold at least one empty hypothesis."""
    return -math.expm1(group * math.log1p(-min(p, 1.0))) if p < 1.0 else 1.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="model folder (an SFT run's model/, a GRPO export)")
    ap.add_argument("manifest", help="JSONL manifest; its noise-only clips (empty text) are probed")
    ap.add_argument("--group", type=int, default=8, help="G, hypotheses per clip (rollout.n; default 8)")
    ap.add_argument("--clips", type=int, default=0, help="the first N noise clips (0 = all)")
    ap.add_argument("--json", type=Path, help="write each clip's p here")
    a = ap.parse_args(argv)
    noise = [c for c in load_manifest(a.manifest) if not c.text]
    noise = noise[: a.clips] if a.clips else noise
    if not noise:
        print(f'error: {a.manifest} has no noise-only clips (text: "")', file=sys.stderr)
        return 2
    model = load_audio_llm(a.model).eval()
    with torch.no_grad():
        probs = [first_eos_prob(model, load_audio(c.audio), c.context) for c in tqdm(noise, desc="probe")]
    q = np.quantile(probs, [0.1, 0.25, 0.5, 0.75, 0.9])
    share = float(np.mean([group_has_empty(p, a.group) for p in probs]))
    print(f"{len(noise)} noise clips of {a.manifest}, model {a.model}")
    print("P(first token ends the answer): " + ", ".join(f"q{k} {v:.2e}" for k, v in zip((10, 25, 50, 75, 90), q)))
    print(f"clips with p >= 1/{a.group}: {sum(p >= 1 / a.group for p in probs)} of {len(noise)}")
    print(f"expected share of groups of {a.group} holding an empty hypothesis: {100 * share:.1f} %")
    if a.json:
        rows = [{"audio": c.audio, "p_first_eos": p} for c, p in zip(noise, probs)]
        a.json.write_text(json.dumps({"group": a.group, "share_groups_with_empty": share, "clips": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
