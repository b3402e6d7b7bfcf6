"""A small UNet velocity field ``v(x_t, t)`` for flow matching on images.

The usual diffusion/flow UNet (Ho et al., 2020; Nichol & Dhariwal, 2021),
kept plain: a sinusoidal time embedding and an MLP, residual blocks
(GroupNorm, SiLU, 3x3 convs) whose second normalisation is modulated by the
time (scale and shift), stride-2 convs down, nearest-neighbour upsampling and
a conv up, skip connections between the two paths, and optional
self-attention at the lowest resolution. The output conv starts at zero, so
the untrained field is exactly 0.

Sizes, set from the config:

- 8x8 digits on a CPU: ``base_channels=32, channel_mults=[1, 2]`` (8x8 and 4x4), about 0.7 M parameters;
- CIFAR-10 on a GPU: ``base_channels=128, channel_mults=[1, 2, 2, 2], num_res_blocks=2,
  attention=True, dropout=0.1`` (32x32 down to 4x4), about 34 M parameters.
"""

from __future__ import annotations

from typing import Optional, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_curate.models.mlp import SinusoidalTimeEmbedding, check_even
from lightning_curate.utils.validation import check_float, check_int

__all__ = ["UNetVelocity", "ResBlock", "SelfAttention", "num_parameters"]


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the time embedding as a scale and shift of the second norm."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, 2 * out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``skip(x) + block(x)``: two convolutions, the time embedding scaling and shifting between them."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time_proj(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int, groups: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` plus multi-head self-attention over its spatial positions."""
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # [b, heads, pixels, head_dim]
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class _Level(nn.Module):
    """Res blocks (each optionally followed by attention) that consume an extra time embedding."""

    def __init__(self, blocks: list[ResBlock], attns: list[Optional[SelfAttention]]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList([a if a is not None else nn.Identity() for a in attns])


class UNetVelocity(nn.Module):
    """A UNet velocity field: ``forward(x [B, C, H, W], t [B]) -> [B, C, H, W]``.

    Args:
        in_channels: image channels (1 for digits, 3 for CIFAR-10); the output has as many.
        base_channels: channels at the first resolution.
        channel_mults: one multiplier of ``base_channels`` per resolution; each
            level after the first halves the resolution, so ``H`` and ``W``
            must be divisible by ``2 ** (len(channel_mults) - 1)``.
        num_res_blocks: residual blocks per resolution on the way down (one
            more on the way up, as in the usual UNet).
        time_dim: width of the sinusoidal time embedding and its MLP.
        groups: GroupNorm groups; must divide every channel count.
        dropout: dropout inside the residual blocks.
        attention: self-attention at the lowest resolution (and in the middle block).
        attention_heads: heads of that attention; must divide its channel count.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: list[int] = [1, 2],  # noqa: B006 (copied, never mutated; jsonargparse shows the default)
        num_res_blocks: int = 1,
        time_dim: int = 128,
        groups: int = 8,
        dropout: float = 0.0,
        attention: bool = False,
        attention_heads: int = 4,
    ) -> None:
        super().__init__()
        for key, value in (("in_channels", in_channels), ("base_channels", base_channels),
                           ("num_res_blocks", num_res_blocks), ("groups", groups),
                           ("attention_heads", attention_heads)):
            check_int(key, value, minimum=1)
        mults = [check_int(f"channel_mults[{i}]", m, minimum=1) for i, m in enumerate(channel_mults)]
        if not mults:
            raise ValueError("channel_mults must be a non-empty list of ints >= 1, got []")
        check_even("time_dim", time_dim)
        if check_float("dropout", dropout, minimum=0.0) >= 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        widths = [base_channels * m for m in mults]
        bad = sorted({w for w in widths if w % groups})
        if bad:
            raise ValueError(f"groups={groups} must divide every channel count base_channels * mult "
                             f"({widths}); {bad} are not divisible")
        if attention and widths[-1] % attention_heads:
            raise ValueError(f"attention_heads={attention_heads} must divide the lowest-resolution channel "
                             f"count {widths[-1]}")
        self.in_channels = in_channels
        self.channel_mults = mults
        self.factor = 2 ** (len(mults) - 1)

        self.time_embedding = SinusoidalTimeEmbedding(time_dim)
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        def block(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, time_dim, groups, dropout)

        def attn(level: int, ch: int) -> Optional[SelfAttention]:
            return SelfAttention(ch, groups, attention_heads) if attention and level == len(mults) - 1 else None

        # Down path: remember the channels of every feature map handed to the up path.
        skips = [base_channels]
        ch = base_channels
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, width in enumerate(widths):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(block(ch, width))
                attns.append(attn(level, width))
                ch = width
                skips.append(ch)
            self.down.append(_Level(blocks, attns))
            if level < len(widths) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)

        self.mid1 = block(ch, ch)
        self.mid_attn = SelfAttention(ch, groups, attention_heads) if attention else nn.Identity()
        self.mid2 = block(ch, ch)

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(block(ch + skips.pop(), width))
                attns.append(attn(level, width))
                ch = width
            self.up.append(_Level(blocks, attns))
            if level > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        assert not skips

        self.out_norm = nn.GroupNorm(groups, ch)
        self.out_conv = nn.Conv2d(ch, in_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)  # type: ignore[arg-type]  # a Conv2d made with bias

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Velocity ``[B, C, H, W]`` of images ``x`` at times ``t`` ``[B]``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNetVelocity(in_channels={self.in_channels}) expects x of shape "
                             f"[B, {self.in_channels}, H, W], got {list(x.shape)}")
        h_, w_ = x.shape[-2:]
        if h_ % self.factor or w_ % self.factor:
            raise ValueError(f"UNetVelocity with channel_mults={self.channel_mults} halves the resolution "
                             f"{len(self.channel_mults) - 1} times, so H and W must be divisible by {self.factor}; "
                             f"got {h_}x{w_}")
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [B] = [{x.shape[0]}], got {list(t.shape)}")
        emb = self.time_mlp(self.time_embedding(t).to(x.dtype))

        h = self.stem(x)
        hs = [h]
        for level, stage in enumerate(cast("list[_Level]", self.down)):
            for blk, att in zip(stage.blocks, stage.attns):
                h = att(blk(h, emb))
                hs.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                hs.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)

        for i, stage in enumerate(cast("list[_Level]", self.up)):
            for blk, att in zip(stage.blocks, stage.attns):
                h = att(blk(torch.cat([h, hs.pop()], dim=1), emb))
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))

        return self.out_conv(F.silu(self.out_norm(h)))


def num_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

