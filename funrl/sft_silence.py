"""Generated near-silent SFT clips (``data.silence_clips``): room tone with an empty transcript.

An SFT set of speech alone teaches a model that every clip has words: the SLAM-ASR model after its SFT gives the
end of text a probability of about 1e-9 as the first token on a noise-only clip, so GRPO's samples never hold
an empty transcript and its hallucination reward can only shorten the text, never remove it. Real SFT corpora
have silences; these clips stand in for them. They are pink noise at -80 to -60 dBFS (room tone, far below the
demo's noise clips), 1 to 5 s long, drawn from ``seed``; their target is EOS alone.
"""

from __future__ import annotations

import numpy as np

from funrl.demo.noise import pink_noise
from policy.messages import Clip

SAMPLE_RATE = 16000
LEVEL_DBFS = (-80.0, -60.0)
SECONDS = (1.0, 5.0)


def silence_clips(n: int, seed: int) -> tuple[list[Clip], list[np.ndarray]]:
    """``n`` room-tone clips (text ``""``) and their 16 kHz waves; the same ``seed`` gives the same clips."""
    rng = np.random.default_rng([seed, 0x51])
    clips, waves = [], []
    for i in range(n):
        seconds, level = rng.uniform(*SECONDS), rng.uniform(*LEVEL_DBFS)
        waves.append((pink_noise(int(seconds * SAMPLE_RATE), rng) * 10 ** (level / 20)).astype(np.float32))
        name = f"<room tone {i + 1} of {n}, {level:.0f} dBFS, {seconds:.1f} s>"
        clips.append(Clip(audio=name, text="", source="data.silence_clips", line=i + 1))
    return clips, waves
