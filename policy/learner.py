"""The FSDP2 GRPO policy learner: one `Learner` per rank (a plain class; `policy.learner_group` runs one Ray
actor per rank). docs/design.md#grpo-math.

One `update(batch)`:

1. every rank gets the whole `ScoredRollout` and flattens it to N = B*G sequences, split into
   ``mini_batches`` mini-batches of whole groups (`mini_batch_rows`); in each, rank r takes rows
   ``r::world_size`` in micro-batches of ``micro_batch`` sequences; a rank with fewer rows runs masked dummy
   micro-batches so that every rank runs the same number of forward/backward passes (FSDP collectives);
2. old log-probs (current weights, no grad; only when there is more than one optimizer step: with one, the
   sampling policy IS the current one and the forward's own detached log-probs are the old ones) and
   reference log-probs (LoRA: the same model with its adapters disabled; full fine-tuning: a frozen, sharded
   copy of the starting model) once, per micro-batch, before any step; with ``beta = 0`` no reference is
   kept or run (as TRL and verl do) and the reported KL is NaN. All log-probs are of
   ``softmax(logits / temperature)``, the rollout's sampling distribution (as verl and TRL do); each clip's
   prompt runs once for its G rows (``learner.share_prompts``, `policy.models.packing`). The pre-update
   log-probs are compared with vLLM's (`policy.grpo.logprob_agreement`, reported every update);
3. ``ppo_epochs`` passes; each pass takes one optimizer step per mini-batch (gradients accumulated over its
   micro-batches, grad-norm clipping, AdamW). The LR scheduler steps once per update (``warmup_steps``
   counts updates). ``tis_cap``: truncated importance sampling with vLLM's log-probs; ``kl_clamp``: the
   per-token KL bound (`policy.grpo`).

Loss scaling: gradient accumulation equals one big batch of the mini-batch's sequences over all ranks; micro-batch
j's loss (a mean over its own units: valid tokens for ``token-mean``, non-empty sequences otherwise) is scaled by
``n_j / N_total * world_size`` (docs/design.md#mini-batches-epochs-and-micro-batches).
``model.train_encoder``: the frontend (encoder + adapter) trains too; the prompt embeddings in the batch are
ignored and recomputed from the clips' audio inside the forward (`policy.learner_batch`); the reference uses
the starting frontend. `named_frontend_weights_for_sync` feeds the embedding worker.

NaN/inf in advantages, losses or the gradient norm raise `FloatingPointError` on every rank before that
optimizer step (gradients cleared; the message says whether earlier steps of the update changed weights).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import Tensor, nn

from policy.augment import AugmentConfig, Augmenter
from policy.buckets import iter_buckets, send_buckets
from policy.config import LearnerConfig, ModelConfig
from policy.distributed import all_reduce, barrier, init_process_group, pick_device
from policy.grpo import grpo_loss, logprob_agreement
from policy.learner_batch import (
    MicroBatch,
    Rows,
    flatten_batch,
    flatten_rollout,
    load_waves,
    mini_batch_rows,
    plan_micro_batches,
)
from policy.learner_build import shard_policy
from policy.learner_state import (
    check_finite_weights,
    load_learner_state,
    make_scheduler,
    read_learner_info,
    save_learner_state,
)
from policy.learner_stats import UpdateSums
from policy.messages import LearnStats, RolloutBatch, ScoredRollout, check_policy_version
from policy.models import AudioLLM, load_audio_llm
from policy.models.base import as_dtype, atomic_dir
from policy.weight_broadcast import WeightMeta, broadcast_buckets, describe, open_group

NamedTensors = list[tuple[str, Tensor]]


class Learner:
    """One FSDP2 rank of the GRPO learner. Construct cheaply; `setup()` joins the process group and loads."""

    def __init__(
        self,
        model_dir: str,
        model_cfg: ModelConfig,
        cfg: LearnerConfig,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str = "127.0.0.1",
        master_port: int = 29500,
        *,
        total_steps: int | None = None,
        max_audio_seconds: float | None = 30.0,
        temperature: float = 1.0,
        max_new_tokens: int | None = None,
        timeout_s: float = 1800.0,
        augment: AugmentConfig | None = None,
    ) -> None:
        if cfg.lr_schedule != "constant" and total_steps is None:
            raise ValueError(f"learner.lr_schedule={cfg.lr_schedule!r} needs total_steps (the run's step count)")
        self.model_dir, self.model_cfg, self.cfg = str(model_dir), model_cfg, cfg
        self.rank, self.world_size = rank, world_size
        self.master_addr, self.master_port = master_addr, master_port
        self.total_steps, self.timeout_s = total_steps, timeout_s
        self.max_audio_seconds = max_audio_seconds
        self.augment = Augmenter(augment)  # train_encoder: the clips' audio as the embedding worker heard it
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (the rollout's sampling temperature), got {temperature}")
        self.temperature = float(temperature)  # samples are scored under softmax(logits / T), as drawn
        if cfg.agg == "seq-mean-token-sum-norm" and not max_new_tokens:
            raise ValueError(
                "learner.agg=seq-mean-token-sum-norm divides each sequence's loss by the rollout's "
                "max_new_tokens: pass max_new_tokens"
            )
        self.max_new_tokens = max_new_tokens
        self.train_encoder = model_cfg.train_encoder
        self.updates = 0
        self.model: AudioLLM | None = None

    @property
    def _live(self) -> AudioLLM:
        """The loaded model (`setup` loads it, `close` drops it)."""
        if self.model is None:
            raise RuntimeError("Learner: no model loaded (call setup() first)")
        return self.model

    # ----------------------------------------------------------------------------------------- setup
    def setup(self) -> dict[str, Any]:
        """Join the process group (blocks until every rank has), load, LoRA, shard, optimizer, schedule."""
        cfg = self.cfg
        self.device = pick_device(cfg.gpus_per_rank, self.rank)
        if self.device.type == "cpu" and cfg.cpu_threads:
            torch.set_num_threads(cfg.cpu_threads)  # Ray's actors start with OMP_NUM_THREADS = their num_cpus
        self.mesh = init_process_group(
            self.device, self.rank, self.world_size, self.master_addr, self.master_port, self.timeout_s
        )
        torch.manual_seed(cfg.seed)  # identical LoRA init on every rank before sharding
        self.model = self._load()
        built = shard_policy(self.model, cfg, self.train_encoder, self.mesh, self.device, self._load)
        self.root, self.ref_root = built.root, built.ref_root
        self.lora, self.has_reference = built.lora, built.has_reference
        self.optimizer = torch.optim.AdamW(
            built.params, lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay
        )
        self.scheduler = make_scheduler(self.optimizer, cfg, self.total_steps)
        torch.manual_seed(cfg.seed + 1000 * (self.rank + 1))  # per-rank stream for dropout
        return {
            "rank": self.rank,
            "device": str(self.device),
            "parameters": sum(p.numel() for p in self.root.parameters()),  # DTensor numel is global
            "trainable": sum(p.numel() for p in built.params),
        }

    def _load(self, dtype: str = "float32") -> AudioLLM:
        return load_audio_llm(self.model_dir, dtype=dtype, prompt=self.model_cfg.prompt)

    def _require_setup(self) -> None:
        if self.model is None:
            raise RuntimeError("Learner.setup() must run first (on every rank)")

    # ---------------------------------------------------------------------------------------- update
    def update(self, batch: ScoredRollout, max_lag: int = 0) -> LearnStats:
        """One GRPO update on the whole batch (every rank gets the same batch); see the module doc.
        `StaleRolloutError` (on every rank, nothing changed) when the batch was sampled with other weights than
        this learner's current ones or the ``max_lag`` versions before them (one-step-off sampling): a missed
        sync."""
        self._require_setup()
        check_policy_version(batch.rollout.policy_version, self.updates, max_lag)
        start = time.perf_counter()
        data = flatten_batch(batch)
        features = self._features(data)
        parts = [data.select(rows) for rows in mini_batch_rows(data, self.cfg.mini_batches)]
        micro = [self._plan(part, features) for part in parts]
        lr = self.optimizer.param_groups[0]["lr"]
        self.root.eval()
        # one pass over one mini-batch: the sampling policy IS the current one, so its log-probs are the
        # forward's own, detached; otherwise they are computed here, once, before any optimizer step
        separate_old = self.cfg.ppo_epochs > 1 or len(parts) > 1
        old = [[self._logprobs(self.root, p, m) if separate_old else None for m in ms] for p, ms in zip(parts, micro)]
        ref = [[self._ref_logprobs(p, m) if self.has_reference else None for m in ms] for p, ms in zip(parts, micro)]
        acc = UpdateSums()
        total_steps = self.cfg.ppo_epochs * len(parts)
        self.root.train()
        for epoch in range(self.cfg.ppo_epochs):
            for j, part in enumerate(parts):
                loss = self._accumulate(part, micro[j], old[j], ref[j], acc, agreement=epoch == 0)
                acc.grad_norms.append(self._optimizer_step(loss, len(acc.grad_norms), total_steps))
        self.scheduler.step()
        self.updates += 1
        return acc.reduce(
            self.device,
            has_reference=self.has_reference,
            lr=lr,
            num_sequences=len(data),
            micro_batches=sum(len(ms) for ms in micro),
            updates=self.updates,
            seconds=time.perf_counter() - start,
        )

    def logprobs(self, batch: ScoredRollout | RolloutBatch, reference: bool = False) -> Tensor:
        """``[B, G, T]`` log-probs of the batch's tokens under the current policy, or under the reference
        (0 where the mask is 0). Collective: every rank computes its rows and returns the whole tensor."""
        self._require_setup()
        if reference and not self.has_reference:
            raise RuntimeError(
                "Learner.logprobs(reference=True): learner.beta=0 keeps no reference model; "
                "set learner.beta > 0 to compare against the starting model"
            )
        rollout = batch.rollout if isinstance(batch, ScoredRollout) else batch
        data = flatten_rollout(rollout)
        out = torch.zeros(data.ids.shape, dtype=torch.float32, device=self.device)
        self.root.eval()
        for m in self._plan(data, self._features(data)):
            lp = self._ref_logprobs(data, m) if reference else self._logprobs(self.root, data, m)
            if not m.dummy:
                out[m.rows, : m.width] = lp
        if self.world_size > 1:
            dist.all_reduce(out)
        return out.reshape(rollout.token_ids.shape).cpu()

    def _features(self, data: Rows) -> Callable[[list[int]], Any] | None:
        """train_encoder: audio features of given clips (prompts are recomputed inside the forward)."""
        if not self.train_encoder:
            return None
        waves = load_waves(data, self.max_audio_seconds, self.augment)
        return lambda clips: self._live.audio_features([waves[c] for c in clips])

    def _plan(self, data: Rows, features: Callable[[list[int]], Any] | None) -> list[MicroBatch]:
        return plan_micro_batches(data, self.rank, self.world_size, self.cfg.micro_batch, features)

    def _forward(
        self, root: nn.Module, data: Rows, m: MicroBatch, use_ref_frontend: bool = False
    ) -> tuple[Tensor, Tensor]:
        """(log-probs [n, width], mask [n, width]) of one micro-batch through ``root``."""
        ids = data.ids[m.rows, : m.width].to(self.device)
        mask = data.mask[m.rows, : m.width].to(self.device)
        if m.dummy:
            mask = torch.zeros_like(mask)
        share = self.cfg.share_prompts  # each clip's prompt runs once for its rows (same values)
        prompts = None
        if m.audio is None:
            prompts = (
                [data.rollout.prompts.prompt_embeds[c] for c in m.clips] if share else [data.prompts[i] for i in m.rows]
            )
        return root(
            prompts,
            ids,
            mask,
            audio=m.audio,
            use_ref_frontend=use_ref_frontend,
            prompt_index=m.index if share else None,
            temperature=self.temperature,
        ), mask

    @torch.no_grad()
    def _logprobs(self, root: nn.Module, data: Rows, m: MicroBatch) -> Tensor:
        return self._forward(root, data, m)[0].float()

    @torch.no_grad()
    def _ref_logprobs(self, data: Rows, m: MicroBatch) -> Tensor:
        if self.ref_root is not None:  # full fine-tuning: the frozen copy (with its own frontend)
            return self._logprobs(self.ref_root, data, m)
        with self._live.llm.disable_adapter():  # LoRA: the base LLM (+ the frozen frontend copy)
            return self._forward(self.root, data, m, use_ref_frontend=self.train_encoder)[0].float()

    def _normaliser(self, data: Rows) -> float:
        """N_total of the module doc: valid tokens (token-mean) or non-empty sequences of one mini-batch."""
        if self.cfg.agg == "token-mean":
            return max(1.0, float(data.mask.ne(0).sum()))
        return max(1.0, float(data.mask.ne(0).any(dim=1).sum()))

    def _accumulate(
        self,
        data: Rows,
        micro: list[MicroBatch],
        old: list[Tensor | None],
        ref: list[Tensor | None],
        acc: UpdateSums,
        agreement: bool,
    ) -> float:
        """Forward/backward over this rank's micro-batches of one mini-batch (``data``), metrics into ``acc``
        (``agreement``: the pre-update log-probs against the sampler's too); returns this rank's loss."""
        cfg = self.cfg
        norm = self._normaliser(data)
        total = 0.0
        for m, old_m, ref_m in zip(micro, old, ref):
            logp, mask = self._forward(self.root, data, m)
            old_m = logp.detach().float() if old_m is None else old_m
            sampled = data.sample_logp[m.rows, : m.width].to(self.device)
            adv = data.adv[m.rows].to(self.device)
            loss, metrics = grpo_loss(
                logp,
                old_m,
                ref_m,
                adv,
                mask,
                clip_eps=cfg.clip_eps,
                beta=cfg.beta,
                agg=cfg.agg,
                kl_kind=cfg.kl_kind,
                kl_clamp=cfg.kl_clamp,
                rollout_logp=sampled,
                tis_cap=cfg.tis_cap,
                loss=cfg.loss,
                clip_eps_low=cfg.clip_eps_low,
                clip_eps_high=cfg.clip_eps_high,
                norm_len=self.max_new_tokens,
            )
            units = metrics["n_tokens"] if cfg.agg == "token-mean" else metrics["n_seqs"]
            weight = units / norm
            (loss * (weight * self.world_size)).backward()
            total += float(loss.detach()) * weight
            acc.add_loss(float(loss.detach()) * weight, metrics)
            if agreement:
                acc.add_agreement(logprob_agreement(old_m, sampled, mask))
        return total

    def _optimizer_step(self, local_loss: float, index: int = 0, count: int = 1) -> float:
        """Clip and step, unless any rank saw a non-finite loss or the gradient norm is not finite.
        ``index`` of ``count``: this step's place among the update's optimizer steps (for the message)."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        bad = all_reduce([0.0 if math.isfinite(local_loss) else 1.0], op="max", device=self.device)[0]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if not bad else torch.tensor(float("nan"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        grad_norm = float(grad_norm)
        if bad or not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            what = "the loss" if bad else f"the gradient norm ({grad_norm})"
            changed = (
                "no weights were changed"
                if index == 0
                else f"the {index} earlier optimizer step(s) of this update had already changed the weights"
            )
            raise FloatingPointError(
                f"learner.update (update {self.updates}, rank {self.rank}): {what} is NaN/inf "
                f"in optimizer step {index + 1} of {count}; that step was skipped and {changed}"
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    # ------------------------------------------------------------------------------------ weight sync
    def named_weights_for_sync(self, dtype: str = "float32", to_host: bool = True) -> Iterator[tuple[str, Tensor]]:
        """Full LLM weights (LoRA merged) under the names vLLM loads, one tensor at a time, on CPU (``to_host``;
        else on the learner's device), each cast to ``dtype`` (the rollout engine's, e.g. ``"bfloat16"``: half the
        bytes of the fp32 master weights) as it is gathered, so no second full copy is made.

        A collective: every rank must exhaust the iterator; rank 0 yields, the others yield nothing.
        """
        self._require_setup()
        target = as_dtype(dtype)
        for name, tensor in self._live.llm_state_dict():
            if self.rank == 0:
                t = tensor.detach().to(dtype=target)
                yield name, t.to("cpu") if to_host else t

    def state_dict_for_sync(
        self, bucket_bytes: int, dtype: str = "float32", to_host: bool = True
    ) -> Iterator[NamedTensors]:
        """`named_weights_for_sync` (in ``dtype``) grouped into buckets of at most ``bucket_bytes`` (a bigger
        tensor alone); the sizes count the cast tensors."""
        return iter_buckets(self.named_weights_for_sync(dtype, to_host), bucket_bytes)

    # the collective sync (policy.weight_broadcast): rank 0 broadcasts to the engines, the others gather with it
    def join_weight_group(self, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> None:
        """Rank 0 joins the engines' weight group as its rank 0 (a new group replaces an earlier one); the others
        do nothing."""
        if self.rank == 0:
            self._weight_group = open_group(host, port, 0, world_size, backend, timeout_s)
            self._weight_backend = backend

    def weight_meta(self, dtype: str = "float32") -> WeightMeta | None:
        """Collective: the (name, shape, dtype) of every tensor `broadcast_weights` sends, on rank 0."""
        meta = describe(self.named_weights_for_sync(dtype))
        return meta if self.rank == 0 else None

    def broadcast_weights(self, bucket_bytes: int, dtype: str = "float32") -> dict[str, float]:
        """Collective: the full weights in buckets, broadcast by rank 0 to the weight group (nccl: from the
        learner's GPU to the engines' GPUs, no host copy; gloo: from host memory)."""
        group = getattr(self, "_weight_group", None) if self.rank == 0 else None
        if self.rank == 0 and group is None:
            raise RuntimeError("broadcast_weights: join_weight_group first")
        to_host = getattr(self, "_weight_backend", "gloo") == "gloo"
        return broadcast_buckets(group, self.state_dict_for_sync(bucket_bytes, dtype, to_host=to_host))

    def gather_weights(self, dtype: str = "float32") -> NamedTensors | None:
        """Collective: rank 0 returns the full list of (name, tensor) in ``dtype``; other ranks None."""
        weights = list(self.named_weights_for_sync(dtype))
        return weights if self.rank == 0 else None

    def named_frontend_weights_for_sync(self) -> Iterator[tuple[str, Tensor]]:
        """Full frontend (encoder + adapter) parameters under ``model.frontend`` names, for the embedding
        worker when ``train_encoder`` is on. Collective like `named_weights_for_sync`; rank 0 yields."""
        self._require_setup()
        for name, param in self._live.frontend.named_parameters():
            t = param.detach()
            t = t.full_tensor() if hasattr(t, "full_tensor") else t
            if self.rank == 0:
                yield name, t.to("cpu")

    def gather_frontend_weights(self) -> NamedTensors | None:
        """Collective: rank 0 returns the frontend's (name, tensor) list; other ranks None."""
        weights = list(self.named_frontend_weights_for_sync())
        return weights if self.rank == 0 else None

    def gather_input_embeddings(self) -> Tensor | None:
        """Collective: the LLM's input embedding table ``[V, H]`` (fp32, CPU) on rank 0, None elsewhere.

        The embedding worker embeds the prompts' text (prefix, suffix) with its own copy of this table; full
        fine-tuning trains it, so it is synced with the rest (else vLLM would sample from prompts built with
        the starting table while the learner scores them with the trained one)."""
        self._require_setup()
        weight = self._live.llm.get_input_embeddings().weight.detach()
        weight = weight.full_tensor() if hasattr(weight, "full_tensor") else weight
        return weight.to("cpu", torch.float32) if self.rank == 0 else None

    def sync_weights(
        self, send: Callable[[NamedTensors], None], bucket_bytes: int, dtype: str = "float32"
    ) -> dict[str, float]:
        """Collective: stream weight buckets, each tensor cast to ``dtype`` (the rollout engine's), to ``send``
        on rank 0, then call ``send.finish()`` if it has one.

        A failing ``send`` stops the sending, but rank 0 still gathers to the end (the other ranks are in the
        same collectives) and raises afterwards. Returns rank 0's seconds / buckets / bytes (bytes as sent).
        """
        buckets = self.state_dict_for_sync(bucket_bytes, dtype)
        return send_buckets(buckets, send, finish=self.rank == 0)

    def export_adapter(self, folder: str) -> str:
        """LoRA only, collective: gather the adapter; rank 0 writes a peft folder (atomic) at ``folder``."""
        self._require_setup()
        if not self.lora:
            raise ValueError("export_adapter: learner.finetune is 'full'; sync full weights instead")
        from policy.models.lora import ADAPTER_WEIGHTS, lora_state_dict

        weights = lora_state_dict(self._live)
        if self.rank == 0:
            with atomic_dir(folder) as tmp:
                save_file(weights, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
                self._live.llm.peft_config["default"].save_pretrained(str(tmp))
        barrier(self.device)
        return str(Path(folder))

    # ------------------------------------------------------------------------------------ export
    def save_model(self, folder: str, *, llm_only: bool = False, dtype: str = "float32") -> str:
        """Collective: the trained model as a plain model folder that `load_audio_llm` (and, for the
        transformers families, transformers itself) loads as it is; rank 0 writes, atomically.

        The full weights (frontend + LLM, LoRA merged) are gathered one tensor at a time into a plain copy of
        the starting model (``model_dir``, loaded on rank 0 in ``dtype``), which is saved with its adapter's
        own layout (`AudioLLM.save`). ``llm_only``: the LLM alone as a plain HF causal-LM folder
        (`AudioLLM.export_llm`, text-only serving). Every rank raises if rank 0 fails.
        """
        self._require_setup()
        from policy.model_export import save_gathered_model

        return save_gathered_model(
            self._live, self.model_dir, self.model_cfg.prompt, folder, self.rank, self.device, llm_only, dtype
        )

    # ------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, folder: str) -> str:
        """Collective: trainable weights + AdamW (DCP), scheduler, RNG of every rank, into ``folder``.
        FloatingPointError (nothing written) when a trainable weight is NaN/inf on any rank."""
        self._require_setup()
        check_finite_weights(self.root, f"save_checkpoint({folder})", self.device)
        info = {
            "updates": self.updates,
            "world_size": self.world_size,
            "finetune": self.cfg.finetune,
            "model_dir": self.model_dir,
        }
        save_learner_state(folder, self.root, self.optimizer, self.scheduler, self.rank, info)
        barrier(self.device)
        return str(folder)

    def load_checkpoint(self, folder: str) -> dict[str, Any]:
        """Collective: restore a `save_checkpoint` folder (saved with any number of ranks)."""
        self._require_setup()
        saved = read_learner_info(folder).get("finetune")
        if saved != self.cfg.finetune:
            raise ValueError(
                f"{folder}: checkpoint was saved with learner.finetune={saved!r}, this run uses {self.cfg.finetune!r}"
            )
        info = load_learner_state(folder, self.root, self.optimizer, self.scheduler, self.rank)
        self.updates = int(info["updates"])
        barrier(self.device)
        return info

    # -------------------------------------------------------------------------------------- lifecycle
    def ready(self) -> bool:
        return True

    def shutdown(self) -> None:
        """Destroy the process group and drop the model (every rank)."""
        if dist.is_initialized():
            dist.destroy_process_group()
        self.model = self.root = self.ref_root = None
