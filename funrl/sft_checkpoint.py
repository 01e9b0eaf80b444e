"""Resumable SFT (``python -m funrl.sft --resume OUT``).

Every ``run.save_every`` steps (and at the end) `save` writes an atomic checkpoint (`funrl.checkpoint`: temp
folder, fsync, ``COMPLETE``, rename) into ``OUT/checkpoints/step_NNNNNN``:

    trained.safetensors   every tensor the optimizer trains (named as in the model) + the model's buffers
    optimizer.pt          AdamW's state (loaded with ``weights_only=True``)
    embed_ctc.safetensors the embedding-space CTC's blank vector and candidate tokens (when
                          ``optim.embed_ctc_weight > 0``; the file a saved model holds too: `sft_embed_ctc.save_head`)
    rng_rank0.*           the python / numpy / torch RNG states
    trainer_state.json    step, elapsed seconds (the time-based schedule goes on from there), whether the run
                          had ended (``finished``), the samplers' positions, the augmentation RNG's state,
                          the model + data config the run was started with

`restore` loads it into a freshly built run of the same config, so the resumed run draws the batches,
augmentations and dropout an uninterrupted one would. Frozen weights are not saved: they come back from
``model.path`` (or the seeded build) exactly as at the start.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from funrl.checkpoint import Checkpoint, CheckpointManager
from funrl.config import ConfigError
from funrl.config_loader import resumed_config
from funrl.data import ClipSampler
from funrl.sft_config import SftConfig, load_sft_config
from funrl.sft_embed_ctc import HEAD_FILE, EmbedCtc, apply_head, read_head, save_head
from policy.learner_state import load_rng_state, save_rng_state
from policy.models import AudioLLM

CHECKED_SECTIONS = ("model", "data")  # a resumed run must match these; optim/run keys may change (e.g. more steps)


@dataclass
class SftRunState:
    """What of a running SFT a checkpoint holds (the model and optimizer are updated in place on restore)."""

    model: AudioLLM
    opt: torch.optim.Optimizer
    embed_ctc: EmbedCtc | None
    samplers: dict[str, ClipSampler]  # "train" and, with a curriculum, "easy"
    rng: np.random.Generator  # concatenation, word shuffling and SpecAugment draws


def _trained_names(s: SftRunState) -> list[str]:
    """The state-dict names of the optimizer's tensors and of the model's (persistent) buffers."""
    trained = {id(p) for g in s.opt.param_groups for p in g["params"]}
    params = dict(s.model.named_parameters(remove_duplicate=False))
    return [name for name in s.model.state_dict(keep_vars=True) if name not in params or id(params[name]) in trained]


def _trained_tensors(s: SftRunState) -> dict[str, torch.Tensor]:
    """`_trained_names`' tensors, cloned so tied or shared storage saves as separate tensors."""
    state = s.model.state_dict(keep_vars=True)
    return {name: state[name].detach().clone().contiguous() for name in _trained_names(s)}


def _config_sections(cfg: SftConfig) -> dict[str, dict]:
    return {name: dataclasses.asdict(getattr(cfg, name)) for name in CHECKED_SECTIONS}


def save(
    ckpts: CheckpointManager, step: int, elapsed_s: float, s: SftRunState, cfg: SftConfig, finished: bool = False
) -> Checkpoint:
    """Write step ``step`` of the run atomically (keeps ``ckpts.keep_last``); ``finished``: the run's last step."""

    def payload(tmp: Path) -> None:
        save_file(_trained_tensors(s), str(tmp / "trained.safetensors"))
        torch.save(s.opt.state_dict(), tmp / "optimizer.pt")
        if s.embed_ctc is not None:
            save_head(s.embed_ctc, tmp)  # the blank and the candidate tokens, as beside a saved model
        save_rng_state(tmp, 0)

    state = {
        "elapsed_s": elapsed_s,
        "finished": finished,
        "samplers": {k: v.state_dict() for k, v in s.samplers.items()},
        "rng": s.rng.bit_generator.state,
        "config": _config_sections(cfg),
    }
    return ckpts.save(step, state, payload)


def check_config(ckpt: Checkpoint, cfg: SftConfig) -> None:
    """Refuse (naming the key) a resumed config whose model or data section differs from the checkpoint's."""
    saved, now = ckpt.trainer_state().get("config", {}), _config_sections(cfg)
    for section in CHECKED_SECTIONS:
        # a key newer than the run: the run had the key's default behaviour (a default_factory key must match)
        defaults = {f.name: f.default for f in dataclasses.fields(type(getattr(cfg, section)))}
        for key, value in now[section].items():
            before = saved.get(section, {}).get(key, defaults[key])
            if not same_setting(before, value):
                raise ConfigError(
                    f"--resume: {section}.{key} is {value!r} but the run in {ckpt.path.parent.parent} was started "
                    f"with {before!r}; drop that override (a changed model or data section starts a new run: "
                    "choose another run.out_dir)",
                    key=f"{section}.{key}",
                )


def same_setting(before: object, now: object) -> bool:
    """Equal values, or two path strings naming the same existing file or folder (a symlink, a relative path)."""
    if before == now:
        return True
    if not (isinstance(before, str) and isinstance(now, str) and before and now):
        return False
    try:
        return os.path.samefile(before, now)
    except OSError:  # either one is missing: only equal strings are the same
        return False


BAD_HEAD = "resume with the config the run started with, or delete this checkpoint to resume from an earlier one"


def head_tensors(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """The checkpoint's embedding-CTC head as `save_head` writes it beside a model: ``blank`` and ``tokens``.
    Checkpoints written before 2026-12-05 held the blank alone there and the tokens in trainer_state.json."""
    saved = read_head(ckpt.path / HEAD_FILE, BAD_HEAD)
    if "tokens" not in saved:
        saved["tokens"] = torch.tensor(ckpt.trainer_state()["embed_ctc_tokens"], dtype=torch.long)
    return saved


def restore(ckpt: Checkpoint, s: SftRunState) -> tuple[int, float]:
    """Load ``ckpt`` (chosen and checked against the config by `resume_point`) into ``s``, built from that
    config; returns (step, elapsed seconds)."""
    state = ckpt.trainer_state()
    tensors = load_file(str(ckpt.path / "trained.safetensors"))
    _, unexpected = s.model.load_state_dict(tensors, strict=False)
    wanted = set(_trained_names(s))
    if unexpected or wanted - tensors.keys():
        raise ValueError(
            f"{ckpt.path}: its tensors do not fit this model (not in the model: {sorted(unexpected)[:3]}, not in "
            f"the checkpoint: {sorted(wanted - tensors.keys())[:3]}); resume with the config the run started with"
        )
    s.opt.load_state_dict(torch.load(ckpt.path / "optimizer.pt", weights_only=True))
    if s.embed_ctc is not None:
        apply_head(s.embed_ctc, head_tensors(ckpt), ckpt.path / HEAD_FILE, BAD_HEAD)
    for name, sampler in s.samplers.items():
        sampler.load_state_dict(state["samplers"][name])
    s.rng.bit_generator.state = state["rng"]
    load_rng_state(ckpt.path, 0)
    return int(state["step"]), float(state["elapsed_s"])


def resume_config(resume: str | None, config: str | None, overrides: list[str]) -> SftConfig:
    """--resume OUT: OUT/config.yaml with the overrides, trained in OUT; else ``config`` with the overrides."""
    if not resume:
        return load_sft_config(config, overrides)
    if config:
        raise ConfigError(
            f"--resume {resume} continues the run in that folder with its own config.yaml: drop --config "
            "(to branch off, copy the folder and resume the copy)",
            key="--config",
        )
    return resumed_config(resume, overrides, SftConfig)


def resume_point(ckpts: CheckpointManager, cfg: SftConfig, resume: bool) -> Checkpoint | None:
    """The checkpoint to resume from (``resume``), or None for a new run; refuses to start over a run."""
    out = Path(cfg.run.out_dir)
    last = ckpts.latest()
    if resume and last is None:
        raise FileNotFoundError(
            f"--resume {out}: no checkpoint in {ckpts.root} (a run saves one every run.save_every steps); "
            "start it anew without --resume"
        )
    if not resume and last is not None:
        raise ConfigError(
            f"{out} already holds an SFT run (checkpoint {last.path}): continue it with "
            f"`python -m funrl.sft --resume {out}`, delete the folder, or choose another run.out_dir",
            key="run.out_dir",
        )
    if last is not None:
        check_config(last, cfg)  # before anything is loaded or config.yaml rewritten
    return last
