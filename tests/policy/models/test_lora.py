"""policy.models.lora: merged weights == the peft model, training model untouched, exported peft folder."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file

from policy.models import load_audio_llm
from policy.models.lora import apply_lora, export_lora_adapter, merged_llm_state_dict


@dataclass(frozen=True)
class Cfg:
    r: int = 4
    alpha: int = 8
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "v_proj", "down_proj")


def _lora_model(folder, seed: int = 0):
    model = apply_lora(load_audio_llm(folder), Cfg())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # lora_B starts at 0 (merged == base): make the adapter do something
        for name, p in model.llm.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _inputs(hidden: int) -> torch.Tensor:
    return torch.randn(2, 9, hidden, generator=torch.Generator().manual_seed(5))


@torch.no_grad()
def test_merged_state_dict_in_plain_llm_gives_peft_logits(tiny_family_dir):
    model = _lora_model(tiny_family_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = dict(merged_llm_state_dict(model))
    plain = transformers.AutoModelForCausalLM.from_pretrained(tiny_family_dir / "llm", local_files_only=True).eval()
    plain.load_state_dict(merged, strict=True)
    x = _inputs(plain.config.hidden_size)
    want = model.llm(inputs_embeds=x).logits
    torch.testing.assert_close(plain(inputs_embeds=x).logits, want, rtol=0, atol=1e-5)
    unmerged = transformers.AutoModelForCausalLM.from_pretrained(tiny_family_dir / "llm", local_files_only=True)
    assert (unmerged(inputs_embeds=x).logits - want).abs().max() > 1e-3  # the adapter changes the output
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert dict(model.llm_state_dict()).keys() == merged.keys()


def test_only_lora_params_train_and_frontend_flag(tiny_model_dir):
    model = apply_lora(load_audio_llm(tiny_model_dir), Cfg())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    with_front = apply_lora(load_audio_llm(tiny_model_dir), Cfg(), train_frontend=True)
    assert all(p.requires_grad for p in with_front.frontend.parameters())
    assert len(with_front.decoder_layers()) == 2


@torch.no_grad()
def test_exported_adapter_loads_back_in_peft(tiny_family_dir, tmp_path):
    model = _lora_model(tiny_family_dir, seed=1)
    folder = export_lora_adapter(model, tmp_path / "adapter")
    weights = load_file(str(folder / "adapter_model.safetensors"))
    layers = model.llm.config.num_hidden_layers
    assert len(weights) == 2 * 3 * layers
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in weights
    assert weights["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].shape[1] == 4
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], sorted(cfg["target_modules"])) == (4, 8, ["down_proj", "q_proj", "v_proj"])
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_family_dir / "llm", local_files_only=True)
    loaded = PeftModel.from_pretrained(base, folder).eval()
    x = _inputs(base.config.hidden_size)
    torch.testing.assert_close(loaded(inputs_embeds=x).logits, model.llm(inputs_embeds=x).logits, rtol=0, atol=1e-6)


@torch.no_grad()
def test_export_llm_of_lora_model_is_the_merged_plain_model(tiny_model_dir, tmp_path):
    model = _lora_model(tiny_model_dir, seed=2)
    model.export_llm(tmp_path / "llm")
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "llm", local_files_only=True).eval()
    x = _inputs(plain.config.hidden_size)
    torch.testing.assert_close(plain(inputs_embeds=x).logits, model.llm(inputs_embeds=x).logits, rtol=0, atol=1e-5)


def test_unknown_target_module_error_lists_linear_layers(tiny_model_dir):
    with pytest.raises(ValueError, match=r"\['qq_proj'\] are not modules of this LLM; its Linear layers: .*q_proj"):
        apply_lora(load_audio_llm(tiny_model_dir), Cfg(target_modules=("qq_proj",)))


def test_merged_state_dict_of_fsdp2_sharded_model_is_plain_and_equal(tiny_model_dir):
    """FSDP2 (gloo, world size 1: parameters become DTensors) -> the same plain tensors as unsharded."""
    import socket

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    model = _lora_model(tiny_model_dir, seed=3)
    want = {k: v.clone() for k, v in merged_llm_state_dict(model)}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    own = not dist.is_initialized()  # an in-process vLLM engine elsewhere may hold a 1-rank group
    if own:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        if dist.get_world_size() != 1:
            pytest.skip("a multi-rank process group is already initialised in this process")
        for layer in model.decoder_layers():
            fully_shard(layer)
        fully_shard(model.llm)
        assert type(model.decoder_layers()[0].self_attn.q_proj.base_layer.weight).__name__ == "DTensor"
        got = dict(model.llm_state_dict())
    finally:
        if own:
            dist.destroy_process_group()
    assert got.keys() == want.keys() and all(type(v) is torch.Tensor for v in got.values())
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
