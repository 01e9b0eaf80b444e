"""Generated near-silent SFT clips (``data.silence_clips``): room tone with an empty transcript.

An SFT set of speech alone teaches a model that every clip has words: the SLAM-ASR model after its SFT gives the
end of text a probability of about 1e-9 as the first token on a noise-only clip, so GRPO's samples never hold
an empty transcript and its hallucination reward can only shorten the text, never remove it. Real SFT corpora
have silences; these clips stand in for them. They are pink noise at -80 to -60 dBFS (room tone, far below the
demo's noise clips), 1 to 5 s long, drawn from ``seed``; their target is EOS alone.

``babble_share`` of them also hold distant talk (``data.silence_babble``): babble of six of the SFT's own speech
clips (``talkers``), smeared as in a room, at the same level as the room tone under it. Real silences are seldom
empty of voices; on the demo's babble-only clips, where a speech-only SFT model answers every time, these give
GRPO's samples a first-token end of text that is not vanishingly rare.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from funrl.demo.noise import babble_noise, pink_noise
from policy.messages import Clip

SAMPLE_RATE = 16000
LEVEL_DBFS = (-80.0, -60.0)
SECONDS = (1.0, 5.0)
TALKERS = 6  # speech clips summed into one clip's distant babble, as the demo's babble noise does


def silence_clips(
    n: int, seed: int, babble_share: float = 0.0, talkers: Sequence[np.ndarray] = ()
) -> tuple[list[Clip], list[np.ndarray]]:
    """``n`` room-tone clips (text ``""``) and their 16 kHz waves; the same ``seed`` gives the same clips.

    The first ``round(n * babble_share)`` of them add distant babble of ``TALKERS`` waves drawn from ``talkers``.
    """
    n_babble = round(n * babble_share)
    if n_babble and len(talkers) < TALKERS:
        raise ValueError(f"data.silence_babble: babble needs at least {TALKERS} speech clips, got {len(talkers)}")
    rng = np.random.default_rng([seed, 0x51])
    clips, waves = [], []
    for i in range(n):
        seconds, level = rng.uniform(*SECONDS), rng.uniform(*LEVEL_DBFS)
        samples = int(seconds * SAMPLE_RATE)
        tone, kind = pink_noise(samples, rng), "room tone"
        if i < n_babble:
            picks = rng.choice(len(talkers), TALKERS, replace=False)
            babble = babble_noise([talkers[int(j)] for j in picks], samples, rng, sample_rate=SAMPLE_RATE)
            tone, kind = (tone + babble) / np.sqrt(2.0), "room tone with distant talk"
        waves.append((tone * 10 ** (level / 20)).astype(np.float32))
        name = f"<{kind} {i + 1} of {n}, {level:.0f} dBFS, {seconds:.1f} s>"
        clips.append(Clip(audio=name, text="", source="data.silence_clips", line=i + 1))
    return clips, waves
