"""Equivalence tolerances derived from the dtype and the size of what is compared, not from one machine's
result (see the note in tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import torch

FP32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7: the relative spacing of float32 numbers
UPDATE_REL = 1e-2  # share of an update that summation order may move (see conftest)


def _np(t) -> np.ndarray:
    return (t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)).astype(np.float64)


def update_error(got, want, start, rel: float = UPDATE_REL) -> float:
    """How far ``got`` is from ``want`` as a multiple of the bound ``rel * |want - start| + 4 eps |want|``
    (Euclidean norms over the tensor): <= 1 passes. Two computations of the same optimizer steps whose
    gradients differ only by summation order land within a small share of the update they both made; a wrong
    update (scale, sign, missing term) is off by a large share of it."""
    g, w, s = _np(got), _np(want), _np(start)
    bound = rel * np.linalg.norm(w - s) + 4 * FP32_EPS * np.linalg.norm(w)
    return float(np.linalg.norm(g - w) / bound) if bound > 0 else float(np.linalg.norm(g - w) > 0) * np.inf
