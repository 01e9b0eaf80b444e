"""Test helper for the learner tests: random scored batches, a plain single-process GRPO reference (no FSDP,
no micro-batches: one big batch), and the body of a learner rank run as a torch.multiprocessing process."""

from __future__ import annotations

import traceback
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch

from policy.config import LearnerConfig, LoraConfig, ModelConfig
from policy.distributed import free_port
from policy.grpo import group_advantages, grpo_loss
from policy.messages import Clip, PromptBatch, RolloutBatch, ScoredRollout
from policy.models import load_audio_llm

HIDDEN, VOCAB = 128, 843  # the tiny encoder_adapter_llm (Qwen2) of tests/conftest.py


def ports_for_later(n: int) -> list[int]:
    """``n`` distinct TCP ports, free now, for rendezvous that happen one after another over minutes (one per
    scenario): `free_port` draws them outside the kernel's ephemeral range, where no outgoing connection takes
    them in the meantime."""
    out: list[int] = []
    while len(out) < n:
        port = free_port()
        if port not in out:
            out.append(port)
    return out


@contextmanager
def one_rank_learner(model_dir, cfg, train_encoder: bool = False):
    """A set-up `Learner` as rank 0 of 1 in this process (gloo), shut down on exit."""
    from policy.learner import Learner

    learner = Learner(
        str(model_dir),
        ModelConfig(path=str(model_dir), train_encoder=train_encoder),
        cfg,
        0,
        1,
        "127.0.0.1",
        free_port(),
    )
    learner.setup()
    try:
        yield learner
    finally:
        learner.shutdown()


def make_batch(
    seed: int,
    B: int = 3,
    G: int = 3,
    T: int = 6,
    nan_adv: bool = False,
    nan_prompt: bool = False,
    sampled: bool = False,
) -> ScoredRollout:
    """B clips x G hypotheses: random prompts [L_i, H], tokens, lengths 1..T (one row fully padded), rewards;
    ``sampled``: random sampler log-probs in [-8, 0) on the tokens (else zeros)."""
    g = torch.Generator().manual_seed(seed)
    clips = tuple(Clip(audio=f"/nowhere/{i}.wav", text="x") for i in range(B))
    embeds = [torch.randn(int(torch.randint(3, 8, (1,), generator=g)), HIDDEN, generator=g) for _ in range(B)]
    if nan_prompt:
        embeds[0][1, 0] = float("nan")
    lens = torch.randint(1, T + 1, (B, G), generator=g)
    lens[B - 1, G - 1] = 0  # an empty hypothesis: no tokens in the loss
    mask = (torch.arange(T) < lens[..., None]).float()
    ids = torch.randint(0, VOCAB, (B, G, T), generator=g) * mask.long()
    texts = tuple(tuple("h" for _ in range(G)) for _ in range(B))
    rewards = torch.rand(B, G, generator=g)
    sample_lp = -8.0 * torch.rand(B, G, T, generator=g) * mask if sampled else torch.zeros(B, G, T)
    rollout = RolloutBatch(PromptBatch(clips, tuple(embeds)), ids, mask, sample_lp, texts)
    adv = group_advantages(rewards)
    if nan_adv:
        adv[1, 0] = float("nan")
    return ScoredRollout(rollout, {"total": rewards}, adv)


def write_waves(folder, n: int = 3, seed: int = 0) -> list[str]:
    """``n`` short 16 kHz wav files of noise (0.4-0.8 s) in ``folder``."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = f"{folder}/clip{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(16000 * (0.4 + 0.2 * i)))).astype(np.float32), 16000)
        paths.append(path)
    return paths


def audio_batch(seed: int, paths: list[str], G: int = 3, T: int = 6) -> ScoredRollout:
    """Like `make_batch` but the clips are real audio files and the prompt embeds are zeros: a learner that
    trains the encoder must recompute them from the audio."""
    base = make_batch(seed, B=len(paths), G=G, T=T)
    clips = tuple(Clip(audio=p, text="x", context="ctx" if i == 1 else None) for i, p in enumerate(paths))
    r = base.rollout
    prompts = PromptBatch(clips, tuple(torch.zeros(4, HIDDEN) for _ in paths))
    rollout = RolloutBatch(prompts, r.token_ids, r.mask, r.sample_logprobs, r.texts)
    return ScoredRollout(rollout, base.rewards, base.advantages)


def audio_prompts(model, batch: ScoredRollout, frontend=None) -> list[torch.Tensor]:
    """Per-row prompt embeds recomputed from the audio (with grad), as the embedding worker builds them."""
    from policy.models.audio import load_audio

    clips = batch.rollout.prompts.clips
    feats = model.audio_features([load_audio(c.audio) for c in clips])
    per_clip = model.build_prompt_embeds((frontend or model.frontend)(feats), [c.context for c in clips])
    G = batch.rollout.group_size
    return [per_clip[b] for b in range(len(clips)) for _ in range(G)]


def learner_cfg(**kw) -> LearnerConfig:
    base = dict(
        lr=1e-4,
        micro_batch=2,
        ppo_epochs=2,
        grad_clip=1.0,
        beta=0.04,
        weight_decay=0.01,
        lora=LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj")),
    )
    base.update(kw)
    return LearnerConfig(**base)


def rows(batch: ScoredRollout):
    r = batch.rollout
    B, G, T = r.token_ids.shape
    prompts = [r.prompts.prompt_embeds[b] for b in range(B) for _ in range(G)]
    return prompts, r.token_ids.reshape(B * G, T), r.mask.reshape(B * G, T), batch.advantages.reshape(B * G)


def halves(batch: ScoredRollout, parts: int) -> list[list[int]]:
    """Row indices of ``parts`` mini-batches written out by hand: clips in contiguous near-equal runs."""
    B, G = batch.advantages.shape
    bounds = [round(j * B / parts) for j in range(parts + 1)]
    return [[b * G + g for b in range(bounds[j], bounds[j + 1]) for g in range(G)] for j in range(parts)]


def reference_run(
    model_dir,
    cfg: LearnerConfig,
    batches: list[ScoredRollout],
    train_encoder: bool = False,
    max_new_tokens: int | None = None,
):
    """Plain PyTorch GRPO: one big batch per epoch, AdamW; returns ((per-update mean losses, mean pre-clip
    gradient norms), llm weights[, frontend weights when train_encoder])."""
    import copy

    torch.manual_seed(cfg.seed)
    model = load_audio_llm(model_dir)
    ref_frontend = copy.deepcopy(model.frontend).requires_grad_(False)
    if cfg.finetune == "lora":
        from policy.models.lora import apply_lora

        apply_lora(model, cfg.lora, train_frontend=train_encoder)
        ref = None
    else:
        model.frontend.requires_grad_(train_encoder)
        ref = load_audio_llm(model_dir).requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)

    def prompts_of(batch, m=None, frontend=None):
        return audio_prompts(m or model, batch, frontend) if train_encoder else rows(batch)[0]

    losses, norms = [], []
    for batch in batches:
        _, ids, mask, adv = rows(batch)
        sampled = batch.rollout.sample_logprobs.reshape(ids.shape)
        with torch.no_grad():
            old = model.sequence_logprobs(prompts_of(batch), ids, mask)
            if ref is None:
                with model.llm.disable_adapter():
                    ref_lp = model.sequence_logprobs(prompts_of(batch, frontend=ref_frontend), ids, mask)
            else:
                ref_lp = ref.sequence_logprobs(prompts_of(batch, ref), ids, mask)
        epoch_losses, epoch_norms = [], []
        for _ in range(cfg.ppo_epochs):
            for part in halves(batch, cfg.mini_batches):  # one optimizer step per mini-batch, in order
                logp = model.sequence_logprobs([prompts_of(batch)[i] for i in part], ids[part], mask[part])
                loss, _ = grpo_loss(
                    logp,
                    old[part],
                    ref_lp[part],
                    adv[part],
                    mask[part],
                    clip_eps=cfg.clip_eps,
                    beta=cfg.beta,
                    agg=cfg.agg,
                    kl_kind=cfg.kl_kind,
                    kl_clamp=cfg.kl_clamp,
                    rollout_logp=sampled[part],
                    tis_cap=cfg.tis_cap,
                    loss=cfg.loss,
                    clip_eps_low=cfg.clip_eps_low,
                    clip_eps_high=cfg.clip_eps_high,
                    norm_len=max_new_tokens,
                )
                loss.backward()
                epoch_norms.append(float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)))
                opt.step()
                opt.zero_grad()
                epoch_losses.append(float(loss.detach()))
        losses.append(sum(epoch_losses) / len(epoch_losses))
        norms.append(sum(epoch_norms) / len(epoch_norms))
    weights = {k: v.detach().clone() for k, v in model.llm_state_dict()}
    if train_encoder:
        return (losses, norms), weights, {k: v.detach().clone() for k, v in model.frontend.named_parameters()}
    return (losses, norms), weights


def _full_state(learner) -> dict[str, np.ndarray]:
    """Every parameter of the policy (collective), as numpy arrays on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    sd = get_model_state_dict(learner.root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.numpy().copy() for k, v in sd.items()}


def _weights(learner) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in learner.named_weights_for_sync()}


def _run_scenario(name: str, spec: dict, learner) -> dict:
    """What each scenario records (on rank 0; every rank runs the same collectives)."""
    out: dict = {}
    if spec.get("state_before"):
        out["state_before"] = _full_state(learner)
    if spec.get("expect_error"):
        before = _weights(learner)
        try:
            learner.update(spec["batches"][0])
            out["error"] = None
        except FloatingPointError as err:
            out["error"] = str(err)
        out["unchanged"] = all(np.array_equal(before[k], v) for k, v in _weights(learner).items())
        learner.update(spec["batches"][1])  # the group stays usable after the guard
        out["after_ok"] = True
        return out
    out["stats"] = [learner.update(b) for b in spec["batches"]]
    out["weights"] = _weights(learner)
    if spec.get("state_after"):
        out["state_after"] = _full_state(learner)
    if spec.get("frontend"):
        out["frontend"] = {k: v.numpy().copy() for k, v in learner.named_frontend_weights_for_sync()}
    if spec.get("no_reference"):
        out["no_ref_model"] = learner.ref_root is None
        try:
            learner.logprobs(spec["batches"][0], reference=True)  # raises before any collective
            out["ref_error"] = None
        except RuntimeError as err:
            out["ref_error"] = str(err)
    if spec.get("ref_logprobs"):
        out["ref_logprobs"] = learner.logprobs(spec["batches"][0], reference=True).numpy()
        out["logprobs"] = learner.logprobs(spec["batches"][0]).numpy()
    return out


def rank_main(rank: int, world: int, ports: list[int], model_dir: str, scenarios: dict, queue) -> None:
    """Body of one rank: run every scenario with a fresh Learner (own port); rank 0 reports."""
    from policy.learner import Learner

    torch.set_num_threads(1)
    results: dict = {}
    try:
        for (name, spec), port in zip(scenarios.items(), ports):
            model_cfg = ModelConfig(path=model_dir, train_encoder=spec.get("train_encoder", False))
            learner = Learner(
                model_dir,
                model_cfg,
                spec["cfg"],
                rank,
                world,
                "127.0.0.1",
                port,
                temperature=spec.get("temperature", 1.0),
                max_new_tokens=spec.get("max_new_tokens"),
            )
            learner.setup()
            try:
                results[name] = _run_scenario(name, spec, learner)
            finally:
                learner.shutdown()
    except Exception:  # noqa: BLE001 - reported to the test
        results["__error__"] = f"rank {rank}:\n{traceback.format_exc()}"
    if rank == 0 or "__error__" in results:
        queue.put((rank, results))


def with_agg(cfg: LearnerConfig, agg: str, micro_batch: int) -> LearnerConfig:
    return replace(cfg, agg=agg, micro_batch=micro_batch)


class BucketRecorder:
    """Stands in for the rollout worker's weight-sync endpoint (same two methods): records what arrives."""

    def __init__(self) -> None:
        self.buckets: list[list[tuple[str, np.ndarray]]] = []
        self.finished = 0
        self.versions: list[int | None] = []

    def update_weights(self, named_tensors) -> None:
        self.buckets.append([(n, t.numpy().copy()) for n, t in named_tensors])

    def finish_weight_update(self, version: int | None = None) -> None:
        self.finished += 1
        self.versions.append(version)

    def received(self) -> tuple[list, int, list]:
        return self.buckets, self.finished, self.versions


def _trainable_and_optimizer(learner) -> tuple[dict[str, np.ndarray], dict]:
    """Collective: full trainable weights and AdamW state ({param: {key: array}}) on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    model_sd, optim_sd = get_state_dict(learner.root, learner.optimizer, options=opts)
    state = {p: {k: v.numpy().copy() for k, v in s.items()} for p, s in optim_sd.get("state", {}).items()}
    return {k: v.numpy().copy() for k, v in model_sd.items()}, state


def resume_rank_main(
    rank: int, world: int, ports: list[int], model_dir: str, waves: list[str], folder: str, queue
) -> None:
    """Learner A (train_encoder): update, save a checkpoint into ``folder``, update. Learner B: load it, the same
    second update. Rank 0 reports both (trainable weights, AdamW state)."""
    from policy.learner import Learner

    torch.set_num_threads(1)
    cfg, model_cfg = learner_cfg(ppo_epochs=1), ModelConfig(path=model_dir, train_encoder=True)
    b1, b2 = audio_batch(1, waves), audio_batch(2, waves)
    results: dict = {}
    try:
        for name, port in zip(("uninterrupted", "resumed"), ports):
            learner = Learner(model_dir, model_cfg, cfg, rank, world, "127.0.0.1", port)
            learner.setup()
            try:
                if name == "uninterrupted":
                    learner.update(b1)
                    learner.save_checkpoint(folder)
                else:
                    learner.load_checkpoint(folder)
                learner.update(b2)
                results[name] = _trainable_and_optimizer(learner)
            finally:
                learner.shutdown()
    except Exception:  # noqa: BLE001 - reported to the test
        results["__error__"] = f"rank {rank}:\n{traceback.format_exc()}"
    if rank == 0 or "__error__" in results:
        queue.put((rank, results))


def run_ranks(target, world: int, args: tuple, timeout_s: float) -> dict:
    """``target(rank, world, *args, queue)`` in ``world`` spawned processes; rank 0's results, or the first
    error (``"__error__"``) a rank reported. Ranks still alive afterwards are killed."""
    import queue as queue_mod

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, world, *args, q)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        _, results = q.get(timeout=timeout_s)
    except queue_mod.Empty:
        results = {"__error__": f"no result from the ranks within {timeout_s:g} s"}
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
    return results
