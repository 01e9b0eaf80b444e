"""``funrl.demo.everyday``: everyday English sentences written by SmolLM2 (real, through vLLM), rendered with the
demo's voices, and ``data.everyday_clips`` putting them among the SFT clips."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from funrl.demo import everyday

REPO = Path(__file__).resolve().parents[2]


def test_sentences_of_keeps_plain_sentences_lower_cased_and_drops_list_marks_quotes_and_meta_text() -> None:
    reply = (
        "Here's a possible sentence:\n"
        '1. "Could you please pass me the salt?"\n'
        "- I\u2019m sorry, the bus was late again today. It rained.\n"
        "This sentence talks about itself too much.\n"
        "The 3 trains are late today.\n"
        "Thank you so much for coming"
    )
    assert everyday.sentences_of(reply) == [
        "could you please pass me the salt",  # list number and quotes gone, question kept
        "i'm sorry the bus was late again today",  # curly apostrophe made plain; "It rained." has 2 words
    ]  # a colon (a heading), "sentence" (talk about the text), a digit, no final stop: dropped
    assert everyday.sentences_of("Wow! " + "very " * 16 + "good.") == []  # 1 word, then 17: both out of range


def test_prompts_are_seeded_chat_turns_over_the_situations_and_forms() -> None:
    import numpy as np

    class Chat:  # the tokenizer's chat template, reduced to what _prompts passes it
        def apply_chat_template(self, chat, tokenize, add_generation_prompt):
            assert not tokenize and add_generation_prompt and [m["role"] for m in chat] == ["user"]
            return chat[0]["content"]

    a = everyday._prompts(Chat(), np.random.default_rng(0), 50)
    assert a == everyday._prompts(Chat(), np.random.default_rng(0), 50)
    forms = [re.escape(f).replace(r"\{\}", "(.+)") for f in everyday.FORMS]
    subjects = {m.group(1) for p in a for f in forms if (m := re.fullmatch(f, p))}
    assert subjects <= set(everyday.SITUATIONS) and len(subjects) > 20


@pytest.mark.vllm
@pytest.mark.slow
def test_smollm2_writes_seeded_distinct_everyday_sentences_and_the_sft_trains_on_their_clips(
    small_demo_data, tmp_path
) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    pytest.importorskip("gguf")
    from funrl.sft_config import load_sft_config
    from funrl.sft_data import load_data

    out = tmp_path / "everyday"
    path = everyday.build_everyday_data(out, 12, seed=0, progress=False)  # data.demo_seed 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == 12 and all(r["lang"] == "en" and (out / r["audio"]).is_file() for r in rows)
    assert all(re.fullmatch(r"[a-z]+(?:'[a-z]+)?(?: [a-z]+(?:'[a-z]+)?){3,15}", t) for t in texts)
    assert everyday.everyday_sentences(12, seed=0, progress=False) == texts  # the same seed: the same sentences
    stamp = (out / "DONE").stat().st_mtime_ns
    over = [f"data.demo_dir={small_demo_data.root}", "data.demo_size=small", "data.curriculum_steps=0"]
    over += ["data.everyday_clips=12", f"data.everyday_dir={out}"]
    data = load_data(load_sft_config(str(REPO / "funrl/demo/sft.yaml"), over), tmp_path)
    assert [c.text for c in data.clips][-12:] == texts and len(data.waves) == len(data.clips)
    assert (out / "DONE").stat().st_mtime_ns == stamp  # the built folder was reused, not rebuilt
