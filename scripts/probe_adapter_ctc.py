"""Where an encoder-adapter-LLM model loses the words: the adapter's own reading against the LLM's transcript.

    python -m funrl.eval --model MODEL --manifest M.jsonl --out R.json        # writes R.clips.jsonl
    python scripts/probe_adapter_ctc.py MODEL R.clips.jsonl [--out probe.json]

A model trained with the embedding-space CTC (`optim.embed_ctc_weight`, `funrl/sft_embed_ctc.py`) keeps the CTC's
blank vector and candidate tokens beside it (``embed_ctc.safetensors``). Each speech clip of the evaluation's
per-clip file that it scored by WER (Mandarin clips, scored by CER, are left out) is run through the model's
encoder and adapter only, and every audio vector is read as its nearest class (blank or a candidate token's input
embedding), repeats merged and blanks dropped: the text the adapter writes before the LLM reads it. Its WER is
printed beside the LLM's (the evaluation's own transcripts), on the same clips and by the same normaliser. About
equal: the LLM copies what the adapter wrote, and the adapter (the acoustic reading) is what to improve; far
better than the adapter's: the LLM repairs it with its language prior.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from funrl.eval_metrics import clip_results, summarise  # noqa: E402
from funrl.sft_embed_ctc import HEAD_FILE, EmbedCtc, apply_head, read_head  # noqa: E402
from policy.messages import Clip  # noqa: E402
from policy.models.audio import load_audio  # noqa: E402
from policy.models.base import load_audio_llm  # noqa: E402


def adapter_readings(model_dir: Path, audio_paths: list[str]) -> list[str]:
    """The greedy CTC text of the adapter's vectors for each clip (module doc)."""
    model = load_audio_llm(model_dir)
    head_file = model_dir / HEAD_FILE
    if not head_file.is_file():
        raise SystemExit(f"error: {head_file} not found: the model was not trained with optim.embed_ctc_weight > 0")
    saved = read_head(head_file, remedy="give a model folder an SFT with the embedding CTC wrote")
    head = EmbedCtc(model.get_input_embeddings().weight, saved["tokens"].tolist()[:1])
    apply_head(head, saved, head_file)  # the rest joins in the saved class order (a fresh head sorts them)
    out = []
    with torch.no_grad():
        for path in audio_paths:
            audio = model.frontend(model.frontend.features([load_audio(path)]))[0]
            out.append(model.tokenizer.decode(head.greedy(audio)).strip())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="the model folder (with embed_ctc.safetensors)")
    p.add_argument("clips", type=Path, help="a funrl.eval per-clip file (R.clips.jsonl) of that model")
    p.add_argument("--out", type=Path, help="write the numbers and every clip's three texts here (JSON)")
    a = p.parse_args(argv)
    rows = [json.loads(line) for line in a.clips.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["metric"] == "wer"]  # speech scored by WER: noise-only and Mandarin (CER) aside
    if not rows:
        raise SystemExit(f"error: {a.clips} holds no speech clip scored by WER")
    adapter = adapter_readings(a.model, [r["audio"] for r in rows])
    clips = [Clip(audio=r["audio"], text=r["ref"], lang=r["lang"]) for r in rows]
    # scored as funrl.eval scores: its records of the adapter's texts, and its own records of the LLM's
    scored = clip_results(clips, adapter, rows[0]["normalizer"])
    result = {"clips": len(rows), "adapter_wer": summarise(scored).wer, "llm_wer": summarise(rows).wer}
    print(json.dumps(result))
    texts = [{"ref": r["ref"], "adapter": x, "llm": r["hyp"]} for r, x in zip(rows, adapter)]
    for t in texts[:5]:
        print(f"  reference: {t['ref']}\n  adapter:   {t['adapter']}\n  LLM:       {t['llm']}")
    if a.out:
        a.out.write_text(json.dumps({**result, "per_clip": texts}, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
