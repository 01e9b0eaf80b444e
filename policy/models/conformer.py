"""Conformer audio encoder (FireRedASR-LLM §2.2 style): conv2d subsampling x4, macaron Conformer blocks.

Every operation respects each clip's length, so a padded batch gives the same valid outputs as each clip on
its own: padded frames are zeroed before every convolution, attention masks padded keys.

Length rules (T input frames at 10 ms):
* subsampling: two Conv2d(kernel 3, stride 2, padding 1) -> ``ceil(ceil(T / 2) / 2)`` frames (40 ms);
* splice adapter (`SpliceAdapter`, k = 2) -> ``ceil(T_enc / k)`` frames (80 ms), the last one zero-padded.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class EncoderConfig:
    n_mels: int = 80
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    ffn_dim: int = 1024
    conv_kernel: int = 15  # depthwise conv kernel (odd)
    subsample_channels: int = 32

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"encoder.{f.name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"encoder.d_model {self.d_model} is not divisible by encoder.n_heads {self.n_heads}")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"encoder.conv_kernel must be odd, got {self.conv_kernel}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ceil_div(a: Tensor | int, b: int) -> Tensor | int:
    return (a + b - 1) // b


def length_mask(lengths: Tensor, width: int) -> Tensor:
    """``[B, width]`` bool, True on the first ``lengths[b]`` positions."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def sinusoid(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return pe.to(dtype)


class Conv2dSubsampling(nn.Module):
    """[B, T, F] -> [B, ceil(ceil(T/2)/2), d]: two stride-2 3x3 convs with ReLU, then a linear projection."""

    def __init__(self, n_mels: int, d_model: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        self.out = nn.Linear(channels * ceil_div(ceil_div(n_mels, 2), 2), d_model)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = x * length_mask(lengths, x.shape[1])[:, :, None].to(x.dtype)
        h = x.unsqueeze(1)  # [B, 1, T, F]
        for conv in (self.conv1, self.conv2):
            h = F.relu(conv(h))
            lengths = ceil_div(lengths, 2)
            h = h * length_mask(lengths, h.shape[2])[:, None, :, None].to(h.dtype)
        b, c, t, f = h.shape
        return self.out(h.transpose(1, 2).reshape(b, t, c * f)), lengths


class FeedForward(nn.Module):
    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.up = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.up(self.norm(x))))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key padding mask (scaled dot-product attention)."""

    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class ConvModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv over time (padded frames zeroed first), LayerNorm, SiLU, pointwise."""

    def __init__(self, d: int, kernel: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Linear(d, 2 * d)
        self.dw = nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=d)
        self.dw_norm = nn.LayerNorm(d)
        self.pw2 = nn.Linear(d, d)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = F.glu(self.pw1(self.norm(x)), dim=-1) * mask[:, :, None].to(x.dtype)
        h = self.dw(h.transpose(1, 2)).transpose(1, 2)
        return self.pw2(F.silu(self.dw_norm(h)))


class ConformerBlock(nn.Module):
    """x + FFN/2, x + MHSA, x + Conv, x + FFN/2, then LayerNorm (macaron, post-LN)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.ffn1 = FeedForward(cfg.d_model, cfg.ffn_dim)
        self.attn = SelfAttention(cfg.d_model, cfg.n_heads)
        self.conv = ConvModule(cfg.d_model, cfg.conv_kernel)
        self.ffn2 = FeedForward(cfg.d_model, cfg.ffn_dim)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + 0.5 * self.ffn1(x)
        x = x + self.attn(x, mask)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ffn2(x)
        return self.norm(x)


class ConformerEncoder(nn.Module):
    """fbank [B, T, n_mels] + lengths -> encoder states [B, T_enc, d] (zero after each length) + lengths."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.subsample = Conv2dSubsampling(cfg.n_mels, cfg.d_model, cfg.subsample_channels)
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.n_layers))

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x, lengths = self.subsample(feats, lengths)
        x = x + sinusoid(x.shape[1], x.shape[2], x.device, x.dtype)
        mask = length_mask(lengths, x.shape[1])
        for block in self.blocks:
            x = block(x, mask)
        return x * mask[:, :, None].to(x.dtype), lengths


class SpliceAdapter(nn.Module):
    """Stack ``splice`` consecutive frames (zero-padding the tail), then Linear-ReLU-Linear to the LLM size."""

    def __init__(self, d_in: int, splice: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.splice = splice
        self.fc1 = nn.Linear(d_in * splice, hidden)
        self.fc2 = nn.Linear(hidden, d_out)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        b, t, d = x.shape
        pad = (-t) % self.splice
        if pad:
            x = F.pad(x, (0, 0, 0, pad))
        x = x.reshape(b, (t + pad) // self.splice, d * self.splice)
        return self.fc2(F.relu(self.fc1(x))), ceil_div(lengths, self.splice)
