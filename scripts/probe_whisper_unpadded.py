"""Do unpadded Whisper encoder states still carry the words? `python scripts/probe_whisper_unpadded.py WHISPER MANIFEST`

FunRL's ``whisper`` encoder (policy/models/whisper_encoder.py) runs each clip as it is, without Whisper's 30 s of
padding, and an audio-LLM's adapter reads those states. This decodes the speech clips of MANIFEST with Whisper's
own decoder (WHISPER: a converted folder, `scripts/convert_whisper.py`) three ways, side by side:

* ``padded``: Whisper as trained (30 s log-mel, its encoder and decoder): the ceiling;
* ``unpadded``: the states FunRL's encoder gives the adapter, handed to the same decoder;
* ``padded, cut``: the padded encoder's states cut to the clip's frames (what the 30 s padding adds to them).

Whisper's decoder never saw a clip end before 30 s, so from unpadded states it writes the transcript and then
repeats it; the WER of each way is therefore also given on the hypothesis cut to the reference's word count
(``first words``), which measures what the states say rather than where the decoder stops. Prints a table and
writes ``--json``. WER uses the reward library's ``basic`` normaliser and jiwer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jiwer
import torch
from tqdm import tqdm

from funrl.data import load_manifest
from policy.models.audio import load_audio
from rewards.text import normalize

WAYS = ("padded", "unpadded", "padded, cut")


def decode_three_ways(whisper_dir: Path, waves: list) -> dict[str, list[str]]:
    """{way: hypotheses} of Whisper's decoder on the three kinds of encoder states (module doc)."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor
    from transformers.modeling_outputs import BaseModelOutput

    from policy.models.whisper_encoder import (
        WhisperAudioEncoder,
        load_whisper_encoder_weights,
        whisper_encoder_config_from,
    )

    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    proc = WhisperProcessor.from_pretrained(whisper_dir)
    enc = WhisperAudioEncoder(whisper_encoder_config_from(whisper_dir)).eval()
    load_whisper_encoder_weights(enc, whisper_dir)
    out: dict[str, list[str]] = {w: [] for w in WAYS}

    def read(**kw) -> str:
        ids = model.generate(**kw, max_new_tokens=96)
        return proc.batch_decode(ids, skip_special_tokens=True)[0]

    with torch.no_grad():
        for wave in tqdm(waves, desc="decode", unit="clip"):
            padded = proc(wave, sampling_rate=16000, return_tensors="pt").input_features  # [1, 80, 3000]
            fb = enc.features([wave])
            states, _ = enc(fb.feats, fb.lengths)  # [1, T', 384]
            full = model.model.encoder(padded).last_hidden_state[:, : states.shape[1]]
            out["padded"].append(read(input_features=padded))
            out["unpadded"].append(read(encoder_outputs=BaseModelOutput(last_hidden_state=states)))
            out["padded, cut"].append(read(encoder_outputs=BaseModelOutput(last_hidden_state=full)))
    return out


def first_words(hyp: str, ref: str) -> str:
    """``hyp`` cut to as many words as ``ref`` has."""
    return " ".join(hyp.split()[: len(ref.split())])


def wers(refs: list[str], hyps: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    table = {}
    for way, hs in hyps.items():
        hs = [normalize(h) for h in hs]
        table[way] = {
            "wer": jiwer.wer(refs, hs),
            "wer_first_words": jiwer.wer(refs, [first_words(h, r) for h, r in zip(hs, refs)]),
        }
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("whisper", type=Path, help="converted Whisper folder (scripts/convert_whisper.py)")
    p.add_argument("manifest", help="JSONL manifest; its speech clips (non-empty text) are decoded")
    p.add_argument("--clips", type=int, default=120, help="the first N speech clips (default 120)")
    p.add_argument("--json", type=Path, help="write the table (and every hypothesis) here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    clips = [c for c in load_manifest(a.manifest) if c.text][: a.clips]
    if not clips:
        print(f"error: {a.manifest} has no speech clips (every text is empty)", file=sys.stderr)
        return 2
    hyps = decode_three_ways(a.whisper, [load_audio(c.audio) for c in clips])
    refs = [normalize(c.text) for c in clips]
    table = wers(refs, hyps)
    print(f"{len(clips)} clips of {a.manifest}")
    print(f"{'encoder states':<14} {'WER':>8} {'WER, first words':>17}")
    for way, row in table.items():
        print(f"{way:<14} {100 * row['wer']:>7.2f}% {100 * row['wer_first_words']:>16.2f}%")
    if a.json:
        a.json.write_text(json.dumps({"clips": len(clips), "table": table, "refs": refs, "hyps": hyps}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
