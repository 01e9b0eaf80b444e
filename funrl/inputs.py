"""A run's inputs, checked before any file is written or any actor starts: the model folder (a Hub id resolved
from the local cache), reward plugins and names, every manifest line and audio file, the clip sampler."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

import rewards
from funrl.audio_check import check_clips
from funrl.config import ConfigError, TrainConfig, validate_reward_names
from funrl.data import ClipSampler, MixedSampler, make_sampler, quotas
from funrl.data_formats import load_clips
from funrl.loggers import check_available


def with_local_model(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``model.path`` as a local model folder whose ``model_type`` an adapter supports, before any
    worker starts: a Hub id (``org/name[@revision]``) becomes its snapshot folder in the local Hugging Face cache
    (`policy.models.hub`; never downloaded). The run's config.yaml then records that folder, so a resume loads
    the same snapshot."""
    from policy.models import get_adapter
    from policy.models.base import read_config
    from policy.models.hub import resolve_model_path

    folder = resolve_model_path(cfg.model.path, key="model.path")
    try:
        get_adapter(read_config(folder)["model_type"], where=str(folder / "config.json"))
    except ValueError as exc:
        raise ConfigError(f"model.path {cfg.model.path}: {exc}", key="model.path") from None
    if str(folder) == cfg.model.path:
        return cfg
    print(f"[funrl] model.path {cfg.model.path} -> {folder}", file=sys.stderr)
    return replace(cfg, model=replace(cfg.model, path=str(folder)))


@dataclass(frozen=True)
class Inputs:
    """A run's data, checked: the sampler over the training clips, the test and dev clips (None: not given)."""

    sampler: ClipSampler | MixedSampler
    test_clips: list | None
    eval_clips: list | None
    train_clips: tuple = ()

    def all_clips(self) -> list:
        return [*self.train_clips, *(self.test_clips or ()), *(self.eval_clips or ())]


def load_inputs(cfg: TrainConfig) -> Inputs:
    """Reward plugins and names, every manifest line and audio file, the sampler: all problems before any
    actor starts (ConfigError / ManifestError / RewardError)."""
    load_rewards(cfg)
    missing = check_available(cfg.run.loggers)
    if missing:
        raise ConfigError(missing, key="run.loggers")
    clips = checked_manifest(cfg, cfg.data.train_manifest)
    test_clips = checked_manifest(cfg, cfg.data.test_manifest) if cfg.data.test_manifest else None
    eval_clips = checked_manifest(cfg, cfg.data.eval_manifest) if cfg.data.eval_manifest else None
    try:
        d = cfg.data
        pools = quotas(d.noise_per_step, d.lang_per_step, d.context_per_step)
        sampler = make_sampler(clips, cfg.run.clips_per_step, pools, cfg.run.seed, d.shuffle)
    except ValueError as exc:
        key = getattr(exc, "key", "data.noise_per_step")  # EmptyPoolError names the quota that asked for the pool
        raise ConfigError(f"{cfg.data.train_manifest}: {exc}", key=key) from None
    return Inputs(sampler, test_clips, eval_clips, tuple(clips))


def checked_manifest(cfg: TrainConfig, path: str) -> list:
    """A manifest's clips (in data.format), every line and every audio file checked (`funrl.audio_check`,
    data.on_bad_audio)."""
    d = cfg.data
    clips = load_clips(path, d.format, d.audio_cache_dir or None)
    return check_clips(clips, d.min_audio_seconds, d.max_audio_seconds, d.on_bad_audio)


def load_rewards(cfg: TrainConfig) -> None:
    """Import and register ``rewards.plugins``; every name in ``rewards.weights`` must then be registered."""
    for spec in cfg.rewards.plugins:
        rewards.load_plugin(spec)
    validate_reward_names(cfg, rewards.REGISTRY)
    try:
        rewards.text.check_normalizer(cfg.rewards.normalizer)
    except rewards.text.NormalizerError as exc:
        raise ConfigError(f"rewards.normalizer: {exc}", key="rewards.normalizer") from None
