"""Dev-set decoding during SFT (`funrl.sft`): greedy transcripts of an `AudioLLM` and their error rates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from policy.messages import Clip
from policy.models import AudioLLM


@torch.no_grad()
def greedy_decode(
    model: AudioLLM,
    waves: Sequence[np.ndarray],
    contexts: Sequence[str | None],
    max_new_tokens: int = 96,
    batch_size: int = 32,
) -> list[str]:
    """Greedy transcripts (HF ``generate`` on the left-padded prompt embeddings, KV cache)."""
    was_training = model.training
    model.eval()
    llm, tok = model.llm, model.tokenizer
    out: list[str] = []
    try:
        for start in range(0, len(waves), batch_size):
            chunk = list(waves[start : start + batch_size])
            prompts = model.build_prompt_embeds(
                model.embed_audio(model.audio_features(chunk)), list(contexts[start : start + batch_size])
            )
            width = max(p.shape[0] for p in prompts)
            inputs = prompts[0].new_zeros(len(prompts), width, prompts[0].shape[-1])
            attn = torch.zeros(len(prompts), width, dtype=torch.long)
            for i, p in enumerate(prompts):
                inputs[i, width - p.shape[0] :] = p
                attn[i, width - p.shape[0] :] = 1
            gen = llm.generate(
                inputs_embeds=inputs,
                attention_mask=attn,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=model.eos_token_ids,
                pad_token_id=tok.pad_token_id,
            )
            out += [t.strip() for t in tok.batch_decode(gen, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return out


def evaluate(
    model: AudioLLM, clips: Sequence[Clip], waves: Sequence[np.ndarray], max_new_tokens: int, batch_size: int
) -> dict[str, float]:
    """dev_wer (English speech clips), dev_cer_zh (Mandarin), dev_noise_nonempty (noise-only clips)."""
    from rewards.builtin import token_errors

    hyps = greedy_decode(model, waves, [c.context for c in clips], max_new_tokens, batch_size)
    groups = {"dev_wer": lambda c: c.text and c.lang != "zh", "dev_cer_zh": lambda c: c.text and c.lang == "zh"}
    res: dict[str, float] = {}
    for name, keep in groups.items():
        idx = [i for i, c in enumerate(clips) if keep(c)]
        if idx:
            errs = token_errors([hyps[i] for i in idx], [clips[i].text for i in idx])
            res[name] = sum(e for e, _ in errs) / max(1, sum(n for _, n in errs))
    noise = [hyps[i] for i, c in enumerate(clips) if not c.text]
    if noise:
        res["dev_noise_nonempty"] = sum(bool(h.strip()) for h in noise) / len(noise)
    return res
