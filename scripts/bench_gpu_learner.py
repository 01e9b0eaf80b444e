"""Benchmark the FSDP2 GRPO learner on one GPU (issue 7 item 4): a random model the size of Fun-ASR-nano.

    python scripts/bench_gpu_learner.py                                # nano, cuda, bf16, full fine-tuning
    python scripts/bench_gpu_learner.py --micro-batch 32 --model-dir /tmp/nano   # keep / reuse the model folder
    python scripts/bench_gpu_learner.py --device cpu --size tiny      # smoke check of this script (CPU, < 2 min)

The model is an ``encoder_adapter_llm`` folder built in a temp folder (or ``--model-dir``): a Conformer encoder +
splice adapter (``nano``: 32 layers, d_model 512, 0.2B parameters) and a random Qwen3 LLM of Qwen3-0.6B's shape
(hidden 1024, 28 layers, 16 query / 8 KV heads of 128, MLP 3072, vocabulary 151936, tied embeddings: 0.6B), with
the locally built character tokenizer (`policy.models.tokenizer`; the LLM's vocabulary is larger than the
tokenizer's, which changes nothing for the learner). A 1-rank `policy.learner.Learner` (plain class, no Ray)
runs GRPO updates on a random batch of ``clips x group`` rows, each ``prompt-len`` prompt embeddings +
``completion-len`` completion tokens (all valid, so no padding is counted). The encoder is frozen and not run:
the prompt embeddings come with the batch, as in training without ``model.train_encoder``.

Measured, after ``--warmup`` updates, over ``--steps`` updates:

* **tokens/s**: rows x (prompt + completion) tokens of one update / seconds of one update;
* **MFU**: model FLOPs / seconds / the device's peak dense bf16 FLOP/s (`PEAK_TFLOPS`, ``--peak-tflops``).
  FLOPs (`update_flops`): a forward is 2 x (decoder-layer parameters) per position + 2 x hidden x vocab per
  completion position (the LM head runs on the completion only) + 4 x layers x heads x head_dim x S^2 per row of
  S positions (attention, not halved for causality: PaLM's convention); a backward is 2 forwards (full) or 1
  forward + 2 x trainable parameters per position (LoRA); an update is ppo_epochs x (forward + backward) + the
  reference forward + the old-log-prob forward when ppo_epochs > 1;
* **peak memory**: ``torch.cuda.max_memory_allocated`` over the timed updates (model, AdamW and reference state
  included); on CPU the process's peak RSS;
* **weight export**: seconds for ``Learner.gather_weights`` (the full LLM state dict gathered to CPU, what weight
  sync sends), in fp32 and, when the learner supports it, cast to bf16.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from policy.models.conformer import EncoderConfig

# Dense (no sparsity) bf16 tensor-core peak, FLOP/s; the first substring of the device name that matches wins.
PEAK_TFLOPS = (
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
)


@dataclass(frozen=True)
class BenchSize:
    llm: dict[str, int]  # Qwen3Config shape keys
    vocab: int | None  # None: the tokenizer's size
    encoder: EncoderConfig
    adapter_hidden: int
    batch: dict[str, int] = field(default_factory=dict)  # default clips / group / prompt_len / completion_len / micro


SIZES = {
    "nano": BenchSize(  # Fun-ASR-nano: 0.2B encoder + adapter, Qwen3-0.6B
        dict(
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
        ),
        151936,
        EncoderConfig(d_model=512, n_heads=8, n_layers=32, ffn_dim=2048, conv_kernel=15, subsample_channels=256),
        2048,
        dict(clips=16, group=8, prompt_len=150, completion_len=64, micro_batch=16),
    ),
    "small": BenchSize(  # the GPU test's size: seconds to build, same code path
        dict(
            hidden_size=256,
            intermediate_size=768,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
        ),
        8192,
        EncoderConfig(d_model=128, n_heads=4, n_layers=2, ffn_dim=256, conv_kernel=7, subsample_channels=16),
        256,
        dict(clips=4, group=4, prompt_len=64, completion_len=32, micro_batch=8),
    ),
    "tiny": BenchSize(  # CPU smoke check
        dict(
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
        ),
        None,
        EncoderConfig(d_model=96, n_heads=4, n_layers=2, ffn_dim=192, conv_kernel=7, subsample_channels=8),
        256,
        dict(clips=2, group=4, prompt_len=24, completion_len=16, micro_batch=4),
    ),
}


def build_model(folder: str | Path, size: str, seed: int = 0) -> Path:
    """Write a random ``encoder_adapter_llm`` folder of ``SIZES[size]`` (fp32 weights) into ``folder``."""
    import transformers

    from policy.models import AudioLLM, get_adapter
    from policy.models.encoder_adapter_llm import MODEL_TYPE, AdapterConfig, EncoderAdapterFrontend
    from policy.models.features import FbankConfig
    from policy.models.prompt import PromptTemplate
    from policy.models.tokenizer import build_char_tokenizer

    spec = SIZES[size]
    torch.manual_seed(seed)
    tokenizer = build_char_tokenizer()
    config = transformers.Qwen3Config(
        vocab_size=spec.vocab or len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        initializer_range=0.02,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        **spec.llm,
    )
    llm = transformers.Qwen3ForCausalLM(config).eval()
    llm.generation_config = transformers.GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    adapter = AdapterConfig(splice=2, hidden_size=spec.adapter_hidden, llm_hidden_size=config.hidden_size)
    fbank = FbankConfig()
    frontend = EncoderAdapterFrontend(fbank, spec.encoder, adapter).eval()
    meta = {
        "model_type": MODEL_TYPE,
        "features": fbank.to_dict(),
        "cmvn": False,
        "encoder": spec.encoder.to_dict(),
        "adapter": asdict(adapter),
        "ctc_vocab_size": None,
    }
    template = PromptTemplate.for_tokenizer(tokenizer, "Transcribe the audio.")
    model = AudioLLM(frontend, llm, tokenizer, template, MODEL_TYPE, adapter=get_adapter(MODEL_TYPE), config=meta)
    return model.save(folder)


def make_batch(
    vocab: int, hidden: int, clips: int, group: int, prompt_len: int, completion_len: int, seed: int = 0
) -> Any:
    """A random `ScoredRollout`: ``clips`` prompts of ``prompt_len`` embeddings, ``group`` full-length
    completions each, group-relative advantages of random rewards."""
    from policy.grpo import group_advantages
    from policy.messages import Clip, PromptBatch, RolloutBatch, ScoredRollout

    g = torch.Generator().manual_seed(seed)
    embeds = tuple(0.02 * torch.randn(prompt_len, hidden, generator=g) for _ in range(clips))
    shape = (clips, group, completion_len)
    ids = torch.randint(0, vocab, shape, generator=g)
    texts = tuple(tuple("x" for _ in range(group)) for _ in range(clips))
    prompts = PromptBatch(tuple(Clip(audio=f"/bench/{i}.wav", text="x") for i in range(clips)), embeds)
    rollout = RolloutBatch(prompts, ids, torch.ones(shape), torch.zeros(shape), texts)
    rewards = torch.rand(clips, group, generator=g)
    return ScoredRollout(rollout, {"total": rewards}, group_advantages(rewards))


def llm_shape(model_dir: str | Path) -> dict[str, int]:
    """Decoder-layer parameters and the shapes the FLOP count needs, from the folder's LLM config (meta device)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(Path(model_dir) / "llm", local_files_only=True)
    with torch.device("meta"):
        llm = transformers.AutoModelForCausalLM.from_config(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {
        "layer_params": sum(p.numel() for p in llm.model.layers.parameters()),
        "llm_params": sum(p.numel() for p in llm.parameters()),
        "hidden": config.hidden_size,
        "vocab": config.vocab_size,
        "layers": config.num_hidden_layers,
        "attn_width": config.num_attention_heads * head_dim,
    }


def forward_flops(
    shape: dict[str, int], rows: int, prompt_len: int, completion_len: int, attention: bool = True
) -> float:
    """Model FLOPs of one forward of ``rows`` sequences (module doc); ``attention=False``: the matmuls alone."""
    positions = prompt_len + completion_len - 1  # the last completion token is never an input
    matmul = 2 * shape["layer_params"] * positions + 2 * shape["hidden"] * shape["vocab"] * completion_len
    attn = 4 * shape["layers"] * shape["attn_width"] * positions**2 if attention else 0
    return float(rows * (matmul + attn))


def update_flops(
    shape: dict[str, int],
    rows: int,
    prompt_len: int,
    completion_len: int,
    ppo_epochs: int,
    trainable: int | None = None,
) -> float:
    """Model FLOPs of one learner update (module doc). ``trainable``: LoRA's trainable parameters (None: full)."""
    forward = forward_flops(shape, rows, prompt_len, completion_len)
    positions = prompt_len + completion_len - 1
    backward = 2 * forward if trainable is None else forward + 2 * trainable * positions * rows
    return ppo_epochs * (forward + backward) + forward + (forward if ppo_epochs > 1 else 0)


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of ``device``: ``override_tflops`` x 1e12, else the `PEAK_TFLOPS` entry of the GPU's
    name; None when unknown (CPU, or a GPU not in the table)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for key, tf in PEAK_TFLOPS if key in name), None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _export_seconds(learner: Any, device: torch.device) -> dict[str, float]:
    """Seconds (and GB) for gathering the full LLM weights to CPU, fp32 and (if supported) bf16."""
    out: dict[str, float] = {}
    dtypes = ["float32"] + (["bfloat16"] if "dtype" in inspect.signature(learner.gather_weights).parameters else [])
    for dtype in dtypes:
        _sync(device)
        start = time.perf_counter()
        weights = learner.gather_weights(dtype) if dtype != "float32" else learner.gather_weights()
        out[f"export_{dtype}_s"] = time.perf_counter() - start
        out[f"export_{dtype}_gb"] = sum(t.numel() * t.element_size() for _, t in weights) / 1e9
        del weights
    return out


def _timed_updates(learner: Any, batch: Any, device: torch.device, warmup: int, steps: int) -> dict[str, Any]:
    for _ in range(warmup):
        learner.update(batch)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats, start = [], time.perf_counter()
    for _ in range(steps):
        stats.append(learner.update(batch))
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:  # ru_maxrss is KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {
        "update_s": seconds,
        "peak_mem_gib": peak,
        "loss": stats[-1].loss,
        "grad_norm": stats[-1].grad_norm,
        "stats": stats,
    }


def measure(
    model_dir: str | Path,
    *,
    device: str = "cuda",
    dtype: str = "bfloat16",
    finetune: str = "full",
    micro_batch: int = 16,
    ppo_epochs: int = 1,
    clips: int = 16,
    group: int = 8,
    prompt_len: int = 150,
    completion_len: int = 64,
    warmup: int = 1,
    steps: int = 3,
    peak_tflops: float | None = None,
    export: bool = True,
) -> dict[str, Any]:
    """Set up a 1-rank learner on ``model_dir``, time ``steps`` updates after ``warmup``, export; see module doc."""
    import gc

    from policy.config import LearnerConfig, ModelConfig
    from policy.distributed import free_port
    from policy.learner import Learner

    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch.cuda.is_available() is False (use --device cpu for a smoke run)")
    cfg = LearnerConfig(
        lr=1e-6,
        micro_batch=micro_batch,
        ppo_epochs=ppo_epochs,
        finetune=finetune,
        dtype=dtype,
        gpus_per_rank=1.0 if torch.device(device).type == "cuda" else 0.0,
    )
    learner = Learner(str(model_dir), ModelConfig(path=str(model_dir)), cfg, 0, 1, "127.0.0.1", free_port())
    start = time.perf_counter()
    info = learner.setup()
    out: dict[str, Any] = {"setup_s": time.perf_counter() - start, "device": str(learner.device)}
    dev = learner.device
    try:
        shape = llm_shape(model_dir)
        batch = make_batch(shape["vocab"], shape["hidden"], clips, group, prompt_len, completion_len)
        out.update(_timed_updates(learner, batch, dev, warmup, steps))
        if export:
            out.update(_export_seconds(learner, dev))
    finally:
        learner.shutdown()
        del learner
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    rows = clips * group
    flops = update_flops(
        shape, rows, prompt_len, completion_len, ppo_epochs, info["trainable"] if finetune == "lora" else None
    )
    peak = peak_flops(dev, peak_tflops)
    out.update(
        device_name=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        dtype=dtype,
        finetune=finetune,
        rows=rows,
        prompt_len=prompt_len,
        completion_len=completion_len,
        micro_batch=micro_batch,
        ppo_epochs=ppo_epochs,
        tokens=rows * (prompt_len + completion_len),
        update_flops=flops,
        llm_params=shape["llm_params"],
        frontend_params=info["parameters"] - shape["llm_params"],
        trainable=info["trainable"],
        peak_tflops=None if peak is None else peak / 1e12,
    )
    out["tokens_per_s"] = out["tokens"] / out["update_s"]
    out["tflops"] = flops / out["update_s"] / 1e12
    out["mfu"] = None if peak is None else flops / out["update_s"] / peak
    return out


def _si(value: float, unit: str) -> str:
    """``value`` with an SI prefix: 1.23 TFLOP, 45.6 MB."""
    for factor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _fmt_export(r: dict[str, Any], dtype: str) -> str:
    if f"export_{dtype}_s" not in r:
        return "not measured"
    return f"{r[f'export_{dtype}_s']:.3f} s ({_si(r[f'export_{dtype}_gb'] * 1e9, 'B')} to CPU)"


def markdown(r: dict[str, Any], size: str) -> str:
    """The result of `measure` as a two-column markdown table."""
    mfu = "n/a (unknown peak: pass --peak-tflops)" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
    peak = "n/a" if r["peak_tflops"] is None else f"{r['peak_tflops']:.0f}"
    mem = "peak GPU memory (max_memory_allocated)" if r["device"].startswith("cuda") else "peak RSS (CPU)"
    rows = [
        ("device", f"{r['device_name']} ({r['device']})"),
        (
            "model",
            f"{size}: LLM {r['llm_params'] / 1e6:.1f} M + encoder/adapter {r['frontend_params'] / 1e6:.1f} M "
            f"parameters; trainable {r['trainable'] / 1e6:.1f} M ({r['finetune']})",
        ),
        (
            "learner",
            f"1 rank, learner.dtype={r['dtype']}, micro_batch {r['micro_batch']}, ppo_epochs {r['ppo_epochs']}",
        ),
        (
            "batch",
            f"{r['rows']} rows x ({r['prompt_len']} prompt + {r['completion_len']} completion) = {r['tokens']} tokens",
        ),
        ("setup (load + shard)", f"{r['setup_s']:.1f} s"),
        ("GRPO update", f"{r['update_s']:.3f} s"),
        ("tokens/s (prompt + completion)", f"{r['tokens_per_s']:,.0f}"),
        ("model FLOPs per update", _si(r["update_flops"], "FLOP")),
        ("achieved", f"{_si(r['tflops'] * 1e12, 'FLOP/s')} (peak {peak} TFLOP/s)"),
        ("MFU", mfu),
        (mem, f"{r['peak_mem_gib']:.2f} GiB"),
        ("weight export fp32 (gather_weights)", _fmt_export(r, "float32")),
        ("weight export bf16", _fmt_export(r, "bfloat16")),
        ("last loss / grad norm", f"{r['loss']:.3g} / {r['grad_norm']:.3g}"),
    ]
    return "\n".join(["| metric | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", choices=sorted(SIZES), default="nano")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke check)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="learner.dtype")
    p.add_argument("--finetune", choices=("full", "lora"), default="full")
    for name in ("clips", "group", "prompt-len", "completion-len", "micro-batch"):
        p.add_argument(f"--{name}", type=int, default=None, help="default: the size's")
    p.add_argument("--ppo-epochs", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1, help="untimed updates first")
    p.add_argument("--steps", type=int, default=3, help="timed updates")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: by GPU name)")
    p.add_argument("--model-dir", default=None, help="build the model here (reused when it exists); default: temp")
    p.add_argument("--no-export", action="store_true", help="skip timing the weight export")
    p.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    defaults = SIZES[args.size].batch
    shape = {
        k: getattr(args, k) if getattr(args, k) is not None else defaults[k]
        for k in ("clips", "group", "prompt_len", "completion_len", "micro_batch")
    }
    with tempfile.TemporaryDirectory(prefix="bench_gpu_learner_") as tmp:
        folder = Path(args.model_dir or Path(tmp) / args.size)
        start = time.perf_counter()
        if not (folder / "config.json").is_file():
            build_model(folder, args.size)
            print(f"built {args.size} model in {folder} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
        result = measure(
            folder,
            device=args.device,
            dtype=args.dtype,
            finetune=args.finetune,
            ppo_epochs=args.ppo_epochs,
            warmup=args.warmup,
            steps=args.steps,
            peak_tflops=args.peak_tflops,
            export=not args.no_export,
            **shape,
        )
    print(markdown(result, args.size))
    if args.json:
        raw = {k: v for k, v in result.items() if k != "stats"}
        Path(args.json).write_text(json.dumps({"size": args.size, **raw}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
