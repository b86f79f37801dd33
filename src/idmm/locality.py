"""Locality priors for ViTs trained on a few thousand images: shifted patch tokenisation (SPT)
and locality self-attention (LSA), from Lee, Lee and Song, "Vision Transformer for Small-Size
Datasets" (2021), and a relative position bias (Shaw et al. 2018; Swin's per-head table of
2-D offsets). All are drop-in timm layers (`embed_layer=`, `attn_layer=` of timm's
VisionTransformer), so a model built with them exports and loads like any timm ViT; the CPU
presets in idmm.models use them (issue 17's locality levers).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Attention, Format, PatchEmbed, nchw_to
from torch import nn

# (dx, dy) of the four diagonal shifts, in units of half a patch
_SHIFTS = ((-1, -1), (1, -1), (-1, 1), (1, 1))


def shifted_copies(x: torch.Tensor, shift: int) -> torch.Tensor:
    """The image and its four diagonal translations by `shift` pixels (zero-filled, not
    wrapped), stacked on the channels: (B, C, H, W) -> (B, 5C, H, W)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (shift, shift, shift, shift))
    copies = [x]
    for dx, dy in _SHIFTS:
        # moving the content by (dx, dy) half-patches = reading the padded image that far back
        top, left = shift - dy * shift, shift - dx * shift
        copies.append(padded[..., top : top + h, left : left + w])
    return torch.cat(copies, dim=1)


class ShiftedPatchEmbed(PatchEmbed):
    """SPT: each patch sees its neighbours' pixels. The image is concatenated with four copies
    shifted diagonally by half a patch, cut into patches, and each flattened patch is
    layer-normalised before its linear projection (the paper's order). Same token grid as the
    plain patchify; ~5x its projection's parameters."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, **kwargs):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                         embed_dim=embed_dim, **kwargs)  # fmt: skip
        ph, pw = self.patch_size
        width = 5 * in_chans * ph * pw
        # the convolution of PatchEmbed is replaced: the paper normalises the raw patch vector,
        # which a strided convolution has no place for
        self.proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ph, pw = self.patch_size
        if h % ph or w % pw:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {ph}x{pw}")
        x = shifted_copies(x, ph // 2)
        c = x.shape[1]
        gh, gw = h // ph, w // pw
        # (B, 5C, H, W) -> (B, gh, gw, 5C * ph * pw): one row per patch, channels outermost
        x = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5).reshape(b, gh, gw, -1)
        x = self.proj(x)  # (B, gh, gw, D)
        if self.flatten:
            x = x.reshape(b, gh * gw, -1)
        elif self.output_fmt != Format.NHWC:
            x = nchw_to(x.permute(0, 3, 1, 2), self.output_fmt)
        return self.norm(x)


class LocalitySelfAttention(Attention):
    """LSA: timm's attention with a learned temperature per head (initialised to timm's
    1/sqrt(head_dim)) and each token's similarity to itself masked out, so that attention
    sharpens on the other tokens instead of staying flat, as it does in ViTs trained on little
    data."""

    def __init__(self, dim, num_heads=8, **kwargs):
        super().__init__(dim, num_heads=num_heads, **kwargs)
        self.scale = nn.Parameter(torch.full((self.num_heads,), self.head_dim**-0.5))

    def forward(self, x, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal or self.gate is not None:
            raise NotImplementedError("LocalitySelfAttention takes no mask or gate")
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q * self.scale.view(1, -1, 1, 1).to(q.dtype)
        off_diagonal = ~torch.eye(n, dtype=torch.bool, device=x.device)
        if self.fused_attn:
            drop = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=off_diagonal, dropout_p=drop,
                                               scale=1.0)  # fmt: skip
        else:
            attn = (q @ k.transpose(-2, -1)).masked_fill(~off_diagonal, float("-inf"))
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = self.norm(x.transpose(1, 2).reshape(b, n, self.attn_dim))
        return self.proj_drop(self.proj(x))


class RelativePositionAttention(Attention):
    """timm's attention plus a learned bias per head and 2-D offset between two patch tokens,
    added to the logits: a prior on *where* a token looks that does not depend on the grid, so
    the same table serves the 2 x 2 local crops, the 4 x 4 global crops and the 7 x 7 fine-tuning
    grid. Offsets beyond +-(max_offset) share the outermost entry (Shaw et al.'s clipping); the
    table starts at zero (the plain ViT). The grid is the largest square in the token count; a
    class token before it gets no bias (models with register tokens are not supported). The
    absolute position embedding stays."""

    max_offset = 7  # a 8 x 8 grid (32 px at patch 4) has every offset its own entry

    def __init__(self, dim, num_heads=8, device=None, dtype=None, **kwargs):
        super().__init__(dim, num_heads=num_heads, device=device, dtype=dtype, **kwargs)
        side = 2 * self.max_offset + 1
        self.rel_bias = nn.Parameter(torch.zeros(self.num_heads, side, side, device=device,
                                                 dtype=dtype))  # fmt: skip
        self._offsets: dict[tuple[int, str], torch.Tensor] = {}  # grid side -> table indices

    def offsets(self, g: int, device: torch.device) -> torch.Tensor:
        """(2, g^2, g^2): the table's row and column for each (query, key) pair of a g x g grid,
        the clipped offset query - key, made once per grid and device."""
        key = (g, str(device))
        if key not in self._offsets:
            ys, xs = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
            coords = torch.stack([ys.flatten(), xs.flatten()])
            rel = (coords[:, :, None] - coords[:, None, :]).clamp(-self.max_offset, self.max_offset)
            self._offsets[key] = (rel + self.max_offset).to(device)
        return self._offsets[key]

    def bias(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """(heads, n, n): the table read at each pair of patch tokens' offset, zeros for the
        class token."""
        g = math.isqrt(n)
        prefix = n - g * g
        if prefix > 1:  # register tokens would be read as part of a larger grid
            raise ValueError(f"RelativePositionAttention takes a square grid and at most a class "
                             f"token; got {n} tokens")  # fmt: skip
        rel = self.offsets(g, self.rel_bias.device)
        patch = self.rel_bias[:, rel[0], rel[1]]  # (heads, g^2, g^2)
        return F.pad(patch, (prefix, 0, prefix, 0)).to(dtype)

    def forward(self, x, attn_mask=None, is_causal=False):
        if attn_mask is not None or is_causal:
            raise NotImplementedError("RelativePositionAttention takes no mask")
        return super().forward(x, attn_mask=self.bias(x.shape[1], x.dtype).unsqueeze(0))
