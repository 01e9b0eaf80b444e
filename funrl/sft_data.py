"""The SFT stage's data (`python -m funrl.sft`): the manifests (the built-in demo's when none is given), the
clips and their waves, plus ``data.silence_clips`` room-tone clips and ``data.broad_clips`` broad-vocabulary
English clips among the training clips."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from funrl.data import ClipSampler, ManifestError, load_manifest
from funrl.sft_config import SftConfig
from funrl.sft_silence import silence_clips
from policy.messages import Clip
from policy.models.audio import load_audio


def resolve_manifests(cfg: SftConfig, out: Path) -> tuple[str, str, str]:
    """(train, dev, curriculum) manifest paths ("" = none); builds (or reuses) the demo data where needed.

    The demo's curriculum manifest (its clean espeak English sft_train clips) is written to OUT.
    """
    d = cfg.data
    train, dev = d.train_manifest, d.dev_manifest
    easy = d.curriculum_manifest if d.curriculum_steps else ""
    if d.demo_dir and (not train or not dev or (d.curriculum_steps and not easy)):
        from funrl.data import write_manifest
        from funrl.demo.build import build_demo_data
        from funrl.demo.plan import DemoSizes, plan_clips

        sizes = DemoSizes.preset(d.demo_size)
        paths = build_demo_data(d.demo_dir, seed=d.demo_seed, sizes=sizes, splits=("sft_train", "dev"))
        train, dev = train or str(paths.sft_train), dev or str(paths.dev)
        if d.curriculum_steps and not easy:
            clean = {
                s.manifest_record()["audio"]: s
                for s in plan_clips(d.demo_seed, sizes)
                if s.split == "sft_train" and s.noise_kind is None and s.engine == "espeak" and s.lang == "en"
            }
            root = paths.sft_train.parent
            rows = [c for c in load_manifest(paths.sft_train) if Path(c.audio).relative_to(root).as_posix() in clean]
            easy = str(write_manifest(rows, out / "curriculum.jsonl"))
    return train, dev, easy


def load_clips(
    path: str, max_seconds: float, speech_only: bool, fmt: str = "jsonl", audio_cache_dir: str = ""
) -> tuple[list[Clip], list[np.ndarray]]:
    """The manifest's clips (``fmt``: `funrl.data_formats.FORMATS`) and their 16 kHz mono waves."""
    from funrl.data_formats import load_clips as load_formatted

    clips = [c for c in load_formatted(path, fmt, audio_cache_dir or None) if c.text or not speech_only]
    if not clips:
        raise ManifestError(path, [f'{path}: no speech clips (every clip has text "")'])
    return clips, [load_audio(c.audio, max_seconds) for c in clips]


@dataclass
class SftData:
    """The training, curriculum and dev clips with their 16 kHz waves."""

    clips: list[Clip]  # speech clips of the training manifest
    waves: list[np.ndarray]
    easy: tuple[list[Clip], list[np.ndarray]] | None  # curriculum clips (first data.curriculum_steps steps)
    dev: tuple[list[Clip], list[np.ndarray]] | None

    def samplers(self, batch_size: int, seed: int) -> tuple[dict[int, np.ndarray], ClipSampler, ClipSampler | None]:
        """(id(clip) -> wave for train + curriculum clips, train sampler, curriculum sampler or None)."""
        audio = {id(c): w for c, w in zip(self.clips, self.waves)}
        if self.easy:
            audio.update({id(c): w for c, w in zip(*self.easy)})
        easy = ClipSampler(self.easy[0], batch_size, seed=seed) if self.easy else None
        return audio, ClipSampler(self.clips, batch_size, seed=seed), easy


def load_data(cfg: SftConfig, out: Path) -> SftData:
    """The run's clips: the training manifest's (speech only unless ``data.noise_clips``) + the room-tone,
    broad-vocabulary and everyday-English clips asked for, the curriculum clips, and the first
    ``data.dev_clips`` dev clips."""
    train_path, dev_path, easy_path = resolve_manifests(cfg, out)
    d = cfg.data
    given = {d.train_manifest, d.dev_manifest, d.curriculum_manifest} - {""}  # the demo's manifests are JSONL

    def load(path: str, speech_only: bool) -> tuple[list[Clip], list[np.ndarray]]:
        return load_clips(
            path, d.max_audio_seconds, speech_only, d.format if path in given else "jsonl", d.audio_cache_dir
        )

    clips, waves = load(train_path, speech_only=not d.noise_clips)
    if d.silence_clips:
        quiet, quiet_waves = silence_clips(d.silence_clips, cfg.run.seed, d.silence_babble, waves)
        print(f"[funrl.sft] {len(clips)} clips of {train_path} + {len(quiet)} room-tone clips", file=sys.stderr)
        clips, waves = clips + quiet, waves + quiet_waves
    if d.broad_clips:
        from funrl.demo.broad import build_broad_data

        broad, broad_waves = load(str(build_broad_data(d.broad_dir, d.broad_clips, d.demo_seed)), True)
        print(f"[funrl.sft] + {len(broad)} broad-vocabulary clips of {d.broad_dir}", file=sys.stderr)
        clips, waves = clips + broad, waves + broad_waves
    if d.everyday_clips:
        from funrl.demo.everyday import build_everyday_data

        every, every_waves = load(str(build_everyday_data(d.everyday_dir, d.everyday_clips, d.demo_seed)), True)
        print(f"[funrl.sft] + {len(every)} everyday-English clips of {d.everyday_dir}", file=sys.stderr)
        clips, waves = clips + every, waves + every_waves
    easy = load(easy_path, speech_only=True) if easy_path else None
    dev = None
    if dev_path:
        dev_clips, dev_waves = load(dev_path, speech_only=False)
        n = cfg.data.dev_clips or len(dev_clips)
        dev = (dev_clips[:n], dev_waves[:n])
    return SftData(clips, waves, easy, dev)
