"""The training config: every section as a frozen dataclass, YAML file + dotted overrides.

    cfg = load_config("my.yaml", ["rollout.n=8", "rewards.weights.wer=2", "learner.lora.r=16"])
    print(dump_config(cfg)); save_config(cfg, "runs/x/config.yaml")

Sections live beside the worker that uses them (``policy.config``: model, learner;
``rollout.config``: rollout); this module adds data, rewards, run and ray. The loader
(`funrl.config_loader`) is generic over nested dataclasses. A YAML mapping given for ``rewards.weights``
replaces the whole mapping; ``rewards.weights.NAME=W`` changes one entry and keeps the others.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from funrl.config_loader import dump_config, save_config, to_dict
from funrl.config_loader import load_config as _load_config
from funrl.data_formats import FORMATS
from funrl.demo.plan import DEFAULT_DEMO_SIZE, PRESETS
from policy.augment import AugmentConfig
from policy.config import (
    ConfigError,
    LearnerConfig,
    LoraConfig,
    ModelConfig,
    closest,
    in_range,
    non_empty,
    one_of,
    optional,
    validate,
)
from rewards.text import NORMALIZERS
from rollout.config import RolloutConfig

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "LearnerConfig",
    "LoraConfig",
    "ModelConfig",
    "RayConfig",
    "RewardsConfig",
    "RolloutConfig",
    "RunConfig",
    "TrainConfig",
    "dump_config",
    "load_config",
    "save_config",
    "to_dict",
    "validate_reward_names",
]

DEFAULT_REWARDS = ("wer", "keyword", "hallucination", "language")
_PLUGIN = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class DataConfig:
    """Manifests (docs/design.md#data-manifest); "" = not given."""

    SECTION: ClassVar[str] = "data"
    train_manifest: str = ""
    eval_manifest: str = ""
    test_manifest: str = ""
    format: str = "jsonl"  # of the three manifests: jsonl | hf_datasets (a datasets folder) | lhotse |
    # nemo (docs/data.md)
    audio_cache_dir: str = ""  # where audio that is not a whole file (embedded, an excerpt) is written as
    # wav; "" = .funrl_audio beside the data
    shuffle: bool = True
    max_audio_seconds: float = 30.0
    min_audio_seconds: float = 0.05  # shorter clips (less than a couple of feature frames) are bad audio
    on_bad_audio: str = "error"  # a clip whose audio does not decode, is too short/long or not finite:
    # error (all named before any worker starts) | skip (each named, left out)
    noise_per_step: int = 0  # noise-only clips (text "") in every training batch; 0 = sample uniformly
    lang_per_step: dict[str, int] = field(default_factory=dict)  # language -> speech clips of that manifest "lang"
    # in every training batch ({zh: 4}: a rare language a fixed share of each step); {} = no such quota
    context_per_step: int = 0  # other speech clips whose prompt carries context (keywords) in every training batch
    demo_dir: str = ""  # build (or reuse) the built-in demo data here, and take its rl_train / dev / test
    # splits for train_manifest / eval_manifest / test_manifest where they are "" (funrl.sft's key of that name)
    demo_size: str = DEFAULT_DEMO_SIZE  # the demo data preset in demo_dir: full | small | keyword_rich
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # online augmentation of the training batches

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "max_audio_seconds": in_range(0, lo_open=True),
                "noise_per_step": in_range(0),
                "context_per_step": in_range(0),
                "min_audio_seconds": in_range(0),
                "on_bad_audio": one_of("error", "skip"),
                "format": one_of(*FORMATS),
                "demo_size": one_of(*PRESETS),
                "lang_per_step": _lang_counts,
            },
        )
        if self.min_audio_seconds >= self.max_audio_seconds:
            raise ConfigError(
                f"data.min_audio_seconds ({self.min_audio_seconds:g}) must be below "
                f"data.max_audio_seconds ({self.max_audio_seconds:g})",
                key="data.min_audio_seconds",
            )


def _lang_counts(v: dict[str, int]) -> str | None:
    bad = {lang: n for lang, n in v.items() if not lang or not isinstance(n, int) or n < 1}
    return f"must map language codes to counts >= 1 (bad: {bad})" if bad else None


def _plugins(v: tuple[str, ...]) -> str | None:
    bad = [p for p in v if not _PLUGIN.fullmatch(p)]
    return f"must be module:function entries (bad: {', '.join(map(repr, bad))})" if bad else None


@dataclass(frozen=True)
class RewardsConfig:
    """Composite reward weights (name -> weight) and extra reward plugins (``module:function``)."""

    SECTION: ClassVar[str] = "rewards"
    weights: dict[str, float] = field(default_factory=lambda: {name: 1.0 for name in DEFAULT_REWARDS})
    plugins: tuple[str, ...] = ()
    normalizer: str = "basic"  # text normaliser of wer, keyword and eval: basic | whisper_en (Whisper's English
    # normaliser, as published ASR tables; extra whisper-en)

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "plugins": _plugins,
                "normalizer": one_of(*NORMALIZERS),
                "weights": lambda w: "must not have an empty name" if "" in w else None,
            },
        )


def _loggers(v: tuple[str, ...]) -> str | None:
    from funrl.loggers import LOGGERS

    bad = [name for name in v if name not in LOGGERS]
    if bad:
        return f"has unknown logger(s) {', '.join(map(repr, bad))}: choose from {', '.join(LOGGERS)}"
    if "jsonl" not in v:
        return "must include jsonl (metrics.jsonl: what funrl.plot reads and --resume trims)"
    return None


def _every(v: str) -> str | None:
    ok = v in ("all", "off") or (v.startswith("every_") and v[6:].isdigit() and int(v[6:]) > 0)
    return None if ok else "must be all, off or every_N with N >= 1 (e.g. every_10)"


@dataclass(frozen=True)
class RunConfig:
    SECTION: ClassVar[str] = "run"
    steps: int = 20
    clips_per_step: int = 8
    seed: int = 0
    out_dir: str = "runs/default"
    eval_every: int = 0  # 0 = only before and after training
    save_every: int = 10  # checkpoint every N steps (and at the last step)
    keep_last: int = 2
    dynamic_sampling: bool = False  # drop groups whose rewards are all equal
    max_refill_rounds: int = 0  # dynamic sampling: up to N extra rounds of clips to refill the batch to
    # clips_per_step groups that are not flat (DAPO); 0 = train on what is left
    save_model: bool = True  # write the trained model (its own format) to OUT/model at the end
    log_rollouts: str = "all"  # OUT/rollouts.jsonl: all | every_N (e.g. every_10) | off
    max_worker_restarts: int = 2  # a dead or hung (ray.call_timeout_s) rollout engine is restarted and re-synced
    # up to N times in a run; then the run stops with a checkpoint
    loggers: tuple[str, ...] = ("jsonl", "tensorboard")  # + wandb, mlflow (extras; offline / local files unless
    # WANDB_MODE / MLFLOW_TRACKING_URI say otherwise); jsonl is required
    project: str = "funrl"  # the W&B project and MLflow experiment of the run (named after OUT's folder)
    async_steps: int = 0  # 1 = one step off: step t+1 is sampled (on weights one version behind) while the
    # learner updates on step t; pair with learner.tis_cap (docs/design.md#one-step-off)

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "steps": in_range(1),
                "clips_per_step": in_range(1),
                "seed": in_range(0),
                "out_dir": non_empty,
                "eval_every": in_range(0),
                "save_every": in_range(1),
                "keep_last": in_range(1),
                "max_refill_rounds": in_range(0),
                "log_rollouts": _every,
                "max_worker_restarts": in_range(0),
                "loggers": _loggers,
                "project": non_empty,
                "async_steps": in_range(0, 1),
            },
        )
        if self.max_refill_rounds and not self.dynamic_sampling:
            raise ConfigError(
                "run.max_refill_rounds refills what dynamic sampling drops: set "
                "run.dynamic_sampling=true too (or max_refill_rounds=0)",
                key="run.max_refill_rounds",
            )


@dataclass(frozen=True)
class RayConfig:
    SECTION: ClassVar[str] = "ray"
    address: str | None = None  # None = start a local Ray; "auto" or host:port = join a cluster
    colocate: bool = False  # learner and rollout share the same GPUs
    num_cpus: int | None = None  # CPUs for a local Ray (None = Ray's default)
    call_timeout_s: float = 1800.0  # longest wait for one actor call (a step's generate, update, sync); past
    # it the actor counts as hung (an engine is restarted: run.max_worker_restarts)
    placement_strategy: str = "PACK"  # how the engines' and ranks' bundles spread over nodes (Ray's strategies)
    # extra Ray resources each engine's / each rank's bundle asks for, e.g. {rollout_node: 0.01}: only nodes
    # started with that resource (`ray start --resources`) take it
    # (docs/scaling.md#71-pinning-roles-to-nodes-and-the-two-node-test)
    rollout_resources: dict[str, float] = field(default_factory=dict)
    learner_resources: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "address": optional(non_empty),
                "num_cpus": optional(in_range(1)),
                "call_timeout_s": in_range(1),
                "placement_strategy": one_of(*PLACEMENT_STRATEGIES),
                "rollout_resources": _custom_resources,
                "learner_resources": _custom_resources,
            },
        )


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


def _custom_resources(v: dict[str, float]) -> str | None:
    builtin = [k for k in v if k in _BUILTIN_RESOURCES]
    if builtin:
        return f"names Ray's own resource(s) {builtin}: CPUs and GPUs come from rollout.* / learner.* settings"
    bad = [k for k, amount in v.items() if not k or not isinstance(amount, (int, float)) or amount <= 0]
    return f"needs a name and an amount > 0 for each resource (got {bad})" if bad else None


@dataclass(frozen=True)
class TrainConfig:
    SECTION: ClassVar[str] = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def lora_adapter_sync(self) -> bool:
        """LoRA training whose adapter folder the engines load (vLLM LoRA); else full weights reach them."""
        return self.learner.finetune == "lora" and self.rollout.lora_sync == "adapter"

    def __post_init__(self) -> None:
        validate(self)
        d, lang = self.data, sum(self.data.lang_per_step.values())
        if d.noise_per_step + d.context_per_step + lang >= self.run.clips_per_step:
            set_keys = [k for k, v in (("context_per_step", d.context_per_step), ("lang_per_step", lang)) if v]
            raise ConfigError(
                f"data.noise_per_step ({d.noise_per_step}) plus data.context_per_step ({d.context_per_step}) "
                f"plus data.lang_per_step's counts ({lang}) must be smaller than "
                f"run.clips_per_step ({self.run.clips_per_step}): the rest of each batch comes from the other clips",
                key=f"data.{(set_keys or ['noise_per_step'])[0]}",
            )
        if self.ray.colocate:
            self._check_colocation()
        if self.run.async_steps and self.ray.colocate:
            raise ConfigError(
                "run.async_steps=1 samples on the engines while the learner updates; ray.colocate=true puts the "
                "engines to sleep during each update: set one of them back (ray.colocate=false or run.async_steps=0)",
                key="run.async_steps",
            )
        if self.learner.mini_batches > self.run.clips_per_step:
            raise ConfigError(
                f"learner.mini_batches ({self.learner.mini_batches}) splits a step's clips into "
                f"optimizer steps: it must be <= run.clips_per_step ({self.run.clips_per_step})",
                key="learner.mini_batches",
            )
        if self.rollout.weight_sync == "collective" and self.lora_adapter_sync:
            raise ConfigError(
                "rollout.weight_sync=collective broadcasts full weights; learner.finetune=lora with "
                "rollout.lora_sync=adapter moves only its adapter (a folder the engines load): set "
                "rollout.weight_sync=object_store, rollout.lora_sync=merged or learner.finetune=full",
                key="rollout.weight_sync",
            )
        if self.rollout.n < 2:
            raise ConfigError(
                "rollout.n must be >= 2 for GRPO (advantages compare the n hypotheses "
                f"of a clip), got {self.rollout.n}",
                key="rollout.n",
            )

    def _check_colocation(self) -> None:
        workers, ranks = self.rollout.num_workers, self.learner.num_ranks
        if workers != ranks:
            raise ConfigError(
                f"ray.colocate=true pairs rollout worker i with learner rank i on one device: "
                f"rollout.num_workers ({workers}) must equal learner.num_ranks ({ranks})",
                key="ray.colocate",
            )
        share = self.rollout.gpus_per_worker + self.learner.gpus_per_rank
        if share > 1.0:
            raise ConfigError(
                f"ray.colocate=true shares one GPU between an engine and a rank: "
                f"rollout.gpus_per_worker + learner.gpus_per_rank must be <= 1, got {share:g} "
                f"(e.g. 0.5 + 0.5)",
                key="ray.colocate",
            )


def validate_reward_names(cfg: TrainConfig, registry_names: Iterable[str]) -> None:
    """Every name in ``rewards.weights`` must be a registered reward (call after loading plugins)."""
    names = sorted(registry_names)
    for name in cfg.rewards.weights:
        if name not in names:
            near = closest(name, names)
            hint = f"; did you mean rewards.weights.{near}?" if near else ""
            raise ConfigError(
                f"rewards.weights.{name}: unknown reward {name!r}{hint} (registered: {', '.join(names)})",
                key=f"rewards.weights.{name}",
            )


def load_config(path: str | None, overrides: list[str], root: type = TrainConfig) -> Any:
    """Defaults <- YAML file ``path`` (any subset of keys) <- dotted ``overrides`` (``key=value``); see
    `funrl.config_loader`. ``root``: the top-level config dataclass (``TrainConfig`` unless given)."""
    return _load_config(path, overrides, root)
