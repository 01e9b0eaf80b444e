"""``python -m funrl.sft``: supervised training (SFT) of an ``encoder_adapter_llm`` audio-LLM.

Loss = cross-entropy of the transcript tokens (and EOS) after the clip's prompt + ``optim.ctc_weight`` x CTC
on the encoder's CTC head (blank = the pad token) + ``optim.embed_ctc_weight`` x CTC of the adapter's output
vectors in the LLM's embedding space (`funrl.sft_embed_ctc`). The prompt is built by the model layer itself
(``audio_features -> embed_audio -> build_prompt_embeds`` with the clip's context), so the SFT model learns
exactly the prompt the rollout gives it. Noise-only clips (``text: ""``) are skipped unless
``data.noise_clips=true`` (then their target is EOS alone); ``data.silence_clips=N`` adds N generated near-silent
clips with that target (`funrl.sft_silence`). Every
``run.eval_every`` steps the model decodes the dev clips greedily (WER on English, CER on Mandarin, share of
non-empty outputs on noise-only clips) and is saved.

Writes OUT/config.yaml, OUT/train_log.jsonl (step, loss, ce, ctc = the CTC losses summed, lr, elapsed_s; dev_*
when evaluated), OUT/model (the model folder; ``policy.models.load_audio_llm`` loads it) and, every
``run.save_every`` steps and at the end, an atomic checkpoint in OUT/checkpoints: ``--resume OUT`` continues a
killed run from it with the batches and schedule an uninterrupted run would have had (`funrl.sft_checkpoint`).
SIGTERM or Ctrl-C once: the step in progress ends, a checkpoint is written and the run exits 143 (130), printing
the command that resumes it; a second signal stops at once (`funrl.preemption`).
"""

from __future__ import annotations

import os

# Busy-waiting OpenMP threads collapse on a shared 2-core CPU (measured: 2-4x slower steps under load);
# libgomp reads this when torch loads it, so it is set before the first torch import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from funrl.checkpoint import Checkpoint, CheckpointManager, RunLock, RunLockedError
from funrl.config import ConfigError, dump_config, save_config
from funrl.cpu import native_bf16
from funrl.data import ManifestError
from funrl.preemption import GracefulStop, Preempted
from funrl.sft_augment import concat_pairs, spec_augment, word_cuts
from funrl.sft_cache import EncoderCache, cached_audio_embeds
from funrl.sft_checkpoint import SftRunState, restore, resume_config, resume_point, save
from funrl.sft_config import SftConfig
from funrl.sft_data import SftData, load_data
from funrl.sft_embed_ctc import HEAD_FILE, EmbedCtc, ctc_mean, load_head, make_embed_ctc, save_head
from funrl.sft_eval import evaluate
from funrl.sft_model import build_model, encoder_top_parameters, set_trainable
from policy.models import AudioLLM, FeatureBatch
from policy.models.hub import resolve_model_path

EPILOG = """\
examples:
  python -m funrl.sft --config funrl/demo/sft_whisper.yaml     # the shipped demo starting model (Whisper encoder)
  python -m funrl.sft --config funrl/demo/sft.yaml             # the earlier one (a Conformer from scratch)
  python -m funrl.sft data.train_manifest=train.jsonl data.dev_manifest=dev.jsonl optim.steps=3000
  python -m funrl.sft --config funrl/demo/sft.yaml data.demo_size=small model.size=tiny optim.steps=20
  python -m funrl.sft --resume runs/sft                         # continue a killed run from its last checkpoint
  python -m funrl.sft --resume runs/sft optim.steps=4000        # ... and train it longer
  python -m funrl.sft model.path=runs/sft/model data.train_manifest=more.jsonl run.out_dir=runs/sft2  # new data
Overrides are dotted keys of the config (sections model, data, optim, run; see OUT/config.yaml).
"""


# ------------------------------------------------------------------------------------------------ loss


def ctc_blank_id(tokenizer) -> int:
    """The CTC blank: the pad token (never part of a transcript)."""
    return int(tokenizer.pad_token_id)


def completion_ids(model: AudioLLM, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Right-padded ``[N, T]`` ids of each text + EOS, their mask, and the text ids alone (CTC targets)."""
    tok = model.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    eos = model.eos_token_ids[0]
    width = max(len(i) for i in ids) + 1
    out = torch.full((len(ids), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(ids), width)
    for r, row in enumerate(ids):
        out[r, : len(row) + 1] = torch.tensor(row + [eos])
        mask[r, : len(row) + 1] = 1
    return out, mask, ids


def sft_loss(
    model: AudioLLM,
    feats: FeatureBatch,
    texts: Sequence[str],
    contexts: Sequence[str | None],
    ctc_weight: float,
    embed_ctc: EmbedCtc | None = None,
    embed_ctc_weight: float = 0.0,
) -> tuple[torch.Tensor, float, float]:
    """(loss, ce, ctc): token-mean CE over the completions (EOS included) + ``ctc_weight`` x mean CTC of the
    encoder's CTC head + ``embed_ctc_weight`` x the adapter output's `EmbedCtc`; ``ctc`` is the sum of the two.

    The encoder runs once: its output inside ``embed_audio`` is caught by a forward hook for the CTC head.
    """
    caught: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hook = None
    if ctc_weight > 0:
        if getattr(model.frontend, "ctc", None) is None:
            raise ValueError("optim.ctc_weight > 0 but the model has no CTC head (set optim.ctc_weight=0)")
        hook = model.frontend.encoder.register_forward_hook(lambda _m, _i, out: caught.__setitem__("enc", out))
    try:
        audio = model.embed_audio(feats)
    finally:
        if hook is not None:
            hook.remove()
    ce, targets = completion_ce(model, audio, texts, contexts)
    loss, ectc = with_embed_ctc(ce, audio, targets, embed_ctc, embed_ctc_weight)
    if ctc_weight <= 0:
        return loss, float(ce.detach()), ectc
    ctc = _ctc_loss(model, *caught["enc"], targets)
    return loss + ctc_weight * ctc, float(ce.detach()), float(ctc.detach()) + ectc


def with_embed_ctc(
    ce: torch.Tensor,
    audio: Sequence[torch.Tensor],
    targets: list[list[int]],
    embed_ctc: EmbedCtc | None,
    weight: float,
) -> tuple[torch.Tensor, float]:
    """(ce + weight x embed CTC, the embed CTC's value): ``ce`` alone when there is none."""
    if embed_ctc is None or weight <= 0:
        return ce, 0.0
    ctc = embed_ctc(audio, targets)
    return ce + weight * ctc, float(ctc.detach())


def completion_ce(
    model: AudioLLM, audio: Sequence[torch.Tensor], texts: Sequence[str], contexts: Sequence[str | None]
) -> tuple[torch.Tensor, list[list[int]]]:
    """Token-mean CE of each text + EOS after its prompt (``audio`` embeddings + context), and the text ids."""
    prompts = model.build_prompt_embeds(audio, list(contexts))
    ids, mask, targets = completion_ids(model, texts)
    logp = model.sequence_logprobs(prompts, ids, mask)
    return -logp.sum() / mask.sum(), targets


def _ctc_loss(model: AudioLLM, enc: torch.Tensor, lengths: torch.Tensor, targets: list[list[int]]) -> torch.Tensor:
    log_probs = model.frontend.ctc(enc).float().log_softmax(-1).transpose(0, 1)  # [T, B, V]
    return ctc_mean(targets, log_probs, lengths, blank=ctc_blank_id(model.tokenizer))


def encoder_ctc_loss(model: AudioLLM, feats: FeatureBatch, texts: Sequence[str]) -> tuple[torch.Tensor, float, float]:
    """(loss, ce=nan, ctc): the encoder's CTC loss alone (the LLM is not run)."""
    tok = model.tokenizer
    enc, lengths = model.frontend.encode(feats)
    ctc = _ctc_loss(model, enc, lengths, [tok(t, add_special_tokens=False)["input_ids"] for t in texts])
    return ctc, float("nan"), float(ctc.detach())


# -------------------------------------------------------------------------------------------- training


def lr_factor(step: int, progress: float, cfg) -> float:
    """Warm-up (linear over ``warmup_steps``), then the schedule over ``progress`` in [0, 1]."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    p = min(1.0, max(0.0, progress))
    lo = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "linear":
        return lo + (1 - lo) * (1 - p)
    return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * p))


def _optimizer(
    model: AudioLLM, o, embed_ctc: EmbedCtc | None = None, encoder: Sequence[torch.nn.Parameter] = ()
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (the embed-CTC blank vector trains too, without decay); the
    ``encoder`` weights (``model.encoder_top_layers``) in groups of their own at ``optim.encoder_lr_scale``."""
    scale = o.encoder_lr_scale
    own = {id(p) for p in encoder}
    rest = [p for p in model.parameters() if id(p) not in own and p.requires_grad]
    extra = list(embed_ctc.parameters()) if embed_ctc is not None else []
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": o.weight_decay, "lr_scale": 1.0},
        {"params": [p for p in rest if p.dim() < 2] + extra, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    if encoder:
        groups += [
            {"params": [p for p in encoder if p.dim() >= 2], "weight_decay": o.weight_decay, "lr_scale": scale},
            {"params": [p for p in encoder if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale},
        ]
    return torch.optim.AdamW(groups, lr=o.lr)


def _start_llm_phase(model: AudioLLM, o, data: SftData, n_top: int) -> dict[int, list[int]]:
    """At step ``optim.encoder_steps`` (0: from the start, e.g. a pretrained encoder): freeze the encoder + CTC
    head (if asked) but for its last ``n_top`` layers (``model.encoder_top_layers``); returns the CTC word cuts."""
    if o.freeze_encoder:
        ctc = model.frontend.ctc
        keep = {id(p) for p in encoder_top_parameters(model, n_top)}
        for p in [*model.frontend.encoder.parameters(), *(ctc.parameters() if ctc is not None else ())]:
            if id(p) not in keep:
                p.requires_grad_(False)
                p.grad = None
    if o.shuffle_words_prob <= 0:
        return {}
    cuts = word_cuts(model, data.clips, data.waves)
    print(
        f"[funrl.sft] step {o.encoder_steps}: CTC word cuts for {len(cuts)} of {len(data.clips)} clips", file=sys.stderr
    )
    return cuts


def _logged_step(line: str) -> float:
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


class _Meter:
    """Running means of loss/ce/ctc, written to OUT/train_log.jsonl every ``log_every`` steps. Resumed at step
    ``resume_step`` (elapsed ``elapsed_s``), the log keeps its lines up to that step and the clock goes on."""

    def __init__(self, path: Path, resume_step: int | None = None, elapsed_s: float = 0.0) -> None:
        kept = []
        if resume_step is not None and path.is_file():
            lines = path.read_text(encoding="utf-8").splitlines()
            kept = [ln for ln in lines if _logged_step(ln) <= resume_step]  # a line torn by the kill goes too
        self.file = open(path, "w", encoding="utf-8")
        self.file.writelines(ln + "\n" for ln in kept)
        self.t0 = time.perf_counter() - elapsed_s
        self.sums, self.count = {"loss": 0.0, "ce": 0.0, "ctc": 0.0}, 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def add(self, loss: float, ce: float, ctc: float) -> None:
        for k, v in (("loss", loss), ("ce", ce), ("ctc", ctc)):
            self.sums[k] += v
        self.count += 1

    def flush(self, step: int, lr: float, extra: dict[str, float]) -> dict:
        rec = {"step": step, **{k: round(v / self.count, 5) for k, v in self.sums.items() if v == v}, "lr": lr}
        rec.update({k: round(v, 4) for k, v in extra.items()})
        rec["elapsed_s"] = round(self.elapsed(), 1)
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        self.sums, self.count = dict.fromkeys(self.sums, 0.0), 0
        return rec


def _autocast_bf16(autocast: str) -> bool:
    """optim.autocast resolved on this CPU (auto: bf16 where it is native), said once at the start."""
    bf16 = autocast == "bf16" or (autocast == "auto" and native_bf16())
    print(f"[funrl.sft] optim.autocast={autocast}: training forward in {'bf16' if bf16 else 'fp32'}", flush=True)
    return bf16


def _step_loss(
    model: AudioLLM,
    o,
    batch: tuple[list, list, list],
    rng: np.random.Generator,
    encoder_phase: bool,
    cache: EncoderCache | None,
    embed_ctc: EmbedCtc | None,
) -> tuple[torch.Tensor, float, float]:
    waves, texts, contexts = batch
    if cache is not None:  # items are tuples of waves; their states were computed before step 1
        enc, lengths = cache.batch(waves, o.spec_time_masks, rng)
        audio = cached_audio_embeds(model, enc, lengths, cache.top_layers)
        ce, targets = completion_ce(model, audio, texts, contexts)
        loss, ectc = with_embed_ctc(ce, audio, targets, embed_ctc, o.embed_ctc_weight)
        return loss, float(ce.detach()), ectc
    feats = spec_augment(model.audio_features(waves), o.spec_freq_masks, o.spec_time_masks, rng)
    if encoder_phase:
        return encoder_ctc_loss(model, feats, texts)
    ctc_weight = 0.0 if o.freeze_encoder else o.ctc_weight
    return sft_loss(model, feats, texts, contexts, ctc_weight, embed_ctc, o.embed_ctc_weight)


def _optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, grad_clip: float, step: int, out: Path) -> None:
    """Backward + AdamW step; a non-finite loss or gradient norm raises before the weights change."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"SFT loss is {float(loss)} at step {step}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    # the norm is computed either way: a NaN/inf gradient with a finite loss must not reach the weights
    grad_norm = torch.nn.utils.clip_grad_norm_(  # every trained tensor (the embed-CTC blank vector too)
        [p for g in opt.param_groups for p in g["params"]], grad_clip if grad_clip > 0 else float("inf")
    )
    if not torch.isfinite(grad_norm):
        raise FloatingPointError(
            f"SFT gradient norm is {float(grad_norm)} at step {step} (loss {float(loss):.4g}); the step was "
            f"skipped, {out / 'model'} keeps the last good model"
        )
    opt.step()


def _start(cfg: SftConfig, out: Path, last: Checkpoint | None) -> tuple[SftRunState, SftData, dict, int, float]:
    """Data, model, optimizer and samplers of the run, restored from ``last`` when resuming."""
    data = load_data(cfg, out)
    save_config(cfg, out / "config.yaml")
    model = build_model(cfg, data.waves)
    set_trainable(model, cfg.model)
    model.train()
    o = cfg.optim
    audio, sampler, easy_sampler = data.samplers(o.batch_size, cfg.run.seed)
    embed_ctc = make_embed_ctc(model, [c.text for c in data.clips]) if o.embed_ctc_weight > 0 else None
    saved_head = Path(cfg.model.path) / HEAD_FILE if cfg.model.path else None
    if embed_ctc is not None and last is None and saved_head is not None and saved_head.is_file():
        load_head(embed_ctc, saved_head)  # an SFT model continued: its trained blank, not a fresh one
        print(f"[funrl.sft] embedding CTC continues from {saved_head}", file=sys.stderr)
    samplers = {"train": sampler, **({"easy": easy_sampler} if easy_sampler is not None else {})}
    rng = np.random.default_rng(cfg.run.seed)
    opt = _optimizer(model, o, embed_ctc, encoder_top_parameters(model, cfg.model.encoder_top_layers))
    state = SftRunState(model, opt, embed_ctc, samplers, rng)
    step, elapsed = 0, 0.0
    if last is not None:
        step, elapsed = restore(last, state)
        print(f"[funrl.sft] resumed from {last.path} at step {step + 1} ({elapsed / 60:.1f} min in)", file=sys.stderr)
    return state, data, audio, step, elapsed


def train(cfg: SftConfig, resume: bool = False) -> Path:
    """Run the SFT stage (``resume``: from the last checkpoint in ``run.out_dir``); returns the output folder
    (config.yaml, train_log.jsonl, model/, checkpoints/)."""
    torch.set_num_threads(cfg.run.threads)
    torch.manual_seed(cfg.run.seed)
    if cfg.model.path:  # a Hub id (org/name[@revision]) -> its snapshot folder in the local HF cache, checked first
        cfg = replace(cfg, model=replace(cfg.model, path=str(resolve_model_path(cfg.model.path, key="model.path"))))
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        ckpts = CheckpointManager(out, keep_last=1)
        last = resume_point(ckpts, cfg, resume)
        state, data, audio, step, elapsed = _start(cfg, out, last)
        meter = _Meter(out / "train_log.jsonl", step if last else None, elapsed)
        try:
            _loop(cfg, out, state, data, audio, step, meter, ckpts)
        finally:
            meter.file.close()
    return out


def _loop(
    cfg: SftConfig,
    out: Path,
    s: SftRunState,
    data: SftData,
    audio: dict,
    step: int,
    meter: _Meter,
    ckpts: CheckpointManager,
) -> None:
    from tqdm import tqdm

    o, model = cfg.optim, s.model
    cache = (
        EncoderCache(model, list(audio.values()), top_layers=cfg.model.encoder_top_layers) if o.cache_encoder else None
    )
    cuts: dict[int, list[int]] = {}
    llm_phase_started = False
    bf16 = _autocast_bf16(o.autocast)

    def progress() -> float:
        p = step / o.steps
        return max(p, meter.elapsed() / (60 * o.minutes)) if o.minutes else p

    with GracefulStop() as stop, tqdm(total=o.steps, initial=step, desc="SFT", unit="step", dynamic_ncols=True) as bar:
        while step < o.steps and progress() < 1.0:
            encoder_phase = step < o.encoder_steps
            if not llm_phase_started and not encoder_phase:
                llm_phase_started = True
                if step > 0 or o.shuffle_words_prob > 0 or o.freeze_encoder:
                    cuts = _start_llm_phase(model, o, data, cfg.model.encoder_top_layers)
            lr = o.lr * lr_factor(step if encoder_phase else step - o.encoder_steps, progress(), o)
            for g in s.opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)  # a checkpoint from before lr_scale: 1
            easy = "easy" in s.samplers and step < cfg.data.curriculum_steps
            source = s.samplers["easy" if easy else "train"]
            clips = source.next_batch()
            batch = concat_pairs(
                clips, audio, source.clips, o.concat_prob, s.rng, o.shuffle_words_prob, cuts, cache is not None
            )
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss, ce, ctc = _step_loss(model, o, batch, s.rng, encoder_phase, cache, s.embed_ctc)
            _optimizer_step(loss, s.opt, o.grad_clip, step + 1, out)
            step += 1
            meter.add(float(loss.detach()), ce, ctc)
            last = step >= o.steps or progress() >= 1.0
            evaluated = (cfg.run.eval_every and step % cfg.run.eval_every == 0 and step > o.encoder_steps) or last
            if step % cfg.run.log_every == 0 or evaluated:
                res = {}
                if evaluated:
                    res = evaluate(model, *data.dev, cfg.run.max_new_tokens, cfg.run.eval_batch) if data.dev else {}
                    model.save(out / "model")
                    if s.embed_ctc is not None:
                        save_head(s.embed_ctc, out / "model")
                rec = meter.flush(step, lr, res)
                bar.set_postfix({k: rec[k] for k in ("loss", "ce", "ctc", "dev_wer") if k in rec})
            if cfg.run.save_every and (step % cfg.run.save_every == 0 or last or stop.requested):
                save(ckpts, step, meter.elapsed(), s, cfg, finished=last)
            bar.update(1)
            if stop.requested and not last:
                raise Preempted(_stopped(step, o.steps, out, bool(cfg.run.save_every)), stop.exit_code)


def _stopped(step: int, steps: int, out: Path, saved: bool) -> str:
    if not saved:
        return f"stopped after step {step} of at most {steps}; no checkpoint (run.save_every=0)"
    return (
        f"stopped after step {step} of at most {steps} (checkpoint written); continue with:\n"
        f"  python -m funrl.sft --resume {out}"
    )


def keys_help() -> str:
    """Every config key with its default, by section (for --help)."""
    import dataclasses

    lines = ["\nconfig keys (defaults):"]
    for f in dataclasses.fields(SftConfig):
        section = f.default_factory()  # type: ignore[operator]  # every section has a default factory
        items = [f"{k.name}={getattr(section, k.name)!r}" for k in dataclasses.fields(section)]
        lines.append(f"  {f.name}: " + ", ".join(items))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m funrl.sft",
        description=__doc__,
        epilog=EPILOG + keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML config file (any subset of the keys; the rest keep defaults)")
    p.add_argument(
        "--resume",
        metavar="OUT",
        help="continue the run in folder OUT from its last checkpoint (OUT/config.yaml; optim/run overrides allowed)",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. optim.lr=1e-3")
    args = p.parse_args(argv)
    try:
        cfg = resume_config(args.resume, args.config, args.overrides)
        print("[funrl.sft] config:\n" + dump_config(cfg), file=sys.stderr)
        out = train(cfg, resume=bool(args.resume))
    except (ConfigError, ManifestError, FileNotFoundError, RunLockedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FloatingPointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Preempted as exc:
        print(f"[funrl.sft] {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"[funrl.sft] model: {out / 'model'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
