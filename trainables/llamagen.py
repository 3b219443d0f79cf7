"""LlamaGen's VQ image tokenizer (vq_ds16_c2i), rebuilt to load its checkpoint from a local path.

The module names follow LlamaGen's `tokenizer/tokenizer_image/vq_model.py`, so
its state dict (`torch.load(path)["model"]`) loads unchanged. The architecture
(channels, levels, residual blocks, codebook) is read from the checkpoint's
tensor shapes, so smaller checkpoints of the same design load too (the tests
build one). Images go in as [-1, 1]; codes are argmin over l2-normalised code
vectors; the code vectors themselves are what the LM reads (8-dim for c2i).
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainables.chunks import DEFAULT_CHUNK, chunked, full_precision
from trainables.encoders import resize
from trainables.errors import UserError


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, 1, 1)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(swish(self.norm2(self.conv1(swish(self.norm1(x))))))
        return (self.nin_shortcut(x) if self.nin_shortcut is not None else x) + h


class AttnBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = group_norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        B, C, H, W = x.shape
        h = self.norm(x)
        q = self.q(h).reshape(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        k, v = self.k(h).reshape(B, C, H * W), self.v(h).reshape(B, C, H * W)  # (B, C, HW)
        w = torch.softmax(q @ k * C**-0.5, dim=2)  # (B, HW, HW)
        return x + self.proj_out((v @ w.transpose(1, 2)).reshape(B, C, H, W))


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: residual blocks (+ attention at the lowest resolution), then a resampler."""

    def __init__(self, channels: list[tuple[int, int]], attention: bool, resample: nn.Module | None, name: str):
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(a, b) for a, b in channels)
        self.attn = nn.ModuleList(AttnBlock(b) for _, b in channels) if attention else nn.ModuleList()
        if resample is not None:
            setattr(self, name, resample)
        self.resample_name = name if resample is not None else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.res):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return getattr(self, self.resample_name)(h) if self.resample_name else h


class Encoder(nn.Module):
    def __init__(self, ch: int, ch_mult: list[int], blocks: int, z_channels: int):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, 1, 1)
        levels, c = [], ch
        for i, mult in enumerate(ch_mult):
            last = i == len(ch_mult) - 1
            channels = [(c if j == 0 else ch * mult, ch * mult) for j in range(blocks)]
            c = ch * mult
            levels.append(Level(channels, last, None if last else Downsample(c), "downsample"))
        self.conv_blocks = nn.ModuleList(levels)
        self.mid = nn.ModuleList([ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)])
        self.norm_out, self.conv_out = group_norm(c), nn.Conv2d(c, z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) -> (B, z, S/f, S/f)
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch: int, ch_mult: list[int], blocks: int, z_channels: int):
        super().__init__()
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, 1, 1)
        self.mid = nn.ModuleList([ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)])
        levels = []
        for i in reversed(range(len(ch_mult))):
            channels = [(c if j == 0 else ch * ch_mult[i], ch * ch_mult[i]) for j in range(blocks + 1)]
            c = ch * ch_mult[i]
            levels.append(Level(channels, i == len(ch_mult) - 1, Upsample(c) if i != 0 else None, "upsample"))
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out, self.conv_out = group_norm(c), nn.Conv2d(c, 3, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(swish(self.norm_out(h)))


class Quantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, dim)  # LlamaGen's usage counter buffer is not needed

    def codebook(self) -> torch.Tensor:  # (K, d), l2-normalised as LlamaGen does
        return F.normalize(self.embedding.weight, p=2, dim=-1)


class LlamaGenVQ(nn.Module):
    """The VQ interface of trainables.vq: encode -> codes, code_vectors, decode -> pixels."""

    def __init__(self, ch: int, ch_mult: list[int], blocks: int, z_channels: int, codebook_size: int, dim: int, image_size: int):
        super().__init__()
        self.encoder, self.decoder = Encoder(ch, ch_mult, blocks, z_channels), Decoder(ch, ch_mult, blocks, z_channels)
        self.quantize = Quantizer(codebook_size, dim)
        self.quant_conv, self.post_quant_conv = nn.Conv2d(z_channels, dim, 1), nn.Conv2d(dim, z_channels, 1)
        self.image_size = image_size
        self.grid = image_size // 2 ** (len(ch_mult) - 1)
        self.num_tokens, self.code_dim, self.codebook_size = self.grid**2, dim, codebook_size
        # Peak activations per image: the full-resolution level's ch-wide maps, ~8 alive at once in a residual
        # block (input, norms, swish, convs, shortcut), in float32; the decoder's last level is as wide.
        self.bytes_per_image = 8 * 4 * ch * ch_mult[0] * image_size**2
        self.chunk = DEFAULT_CHUNK

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] -> (B, N)
        with full_precision(images.device):  # codes must not depend on whether the caller autocasts
            return chunked(self._encode, images.float(), self.chunk)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, 3, S, S) in [0, 1]
        with full_precision(codes.device):
            return chunked(self._decode, codes, self.chunk)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.quant_conv(self.encoder(resize(images, self.image_size) * 2.0 - 1.0))  # (B, d, g, g)
        z = F.normalize(z.permute(0, 2, 3, 1).flatten(1, 2), dim=-1)  # (B, N, d); B may be 0
        codebook = self.quantize.codebook()
        return (z @ codebook.T).argmax(-1)  # unit vectors: nearest = largest dot product

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, N, d)
        return self.quantize.codebook()[codes]

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        q = self.code_vectors(codes).reshape(codes.shape[0], self.grid, self.grid, -1).permute(0, 3, 1, 2)
        return ((self.decoder(self.post_quant_conv(q)) + 1.0) / 2.0).clamp(0.0, 1.0)


def read_checkpoint(path: Path) -> object:
    """A checkpoint's contents, tensors only: LlamaGen's trainer saves its argparse options beside the weights,
    so that class is allowed and nothing else (a planted pickle runs no code)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"generation.vq_pretrained_path {str(path)!r} cannot be read as a weights-only checkpoint ({first})") from None


def load_llamagen_vq(path: str | Path, image_size: int = 256) -> LlamaGenVQ:
    """A LlamaGen VQ checkpoint (`{"model": state_dict}`, or a bare state dict); its shapes fix the architecture."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"generation.vq_pretrained_path {str(path)!r} is not a file (expected LlamaGen's vq_ds16_c2i.pt)")
    blob = read_checkpoint(path)
    state = next((blob[k] for k in ("model", "ema", "state_dict") if isinstance(blob, dict) and k in blob), blob)
    needed = ("quantize.embedding.weight", "encoder.conv_in.weight", "encoder.conv_out.weight", "quant_conv.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        raise UserError(f"generation.vq_pretrained_path {str(path)!r} is not a LlamaGen VQ checkpoint (missing {', '.join(missing)})")
    ch = state["encoder.conv_in.weight"].shape[0]
    levels = sorted({int(m[1]) for k in state if (m := re.match(r"encoder\.conv_blocks\.(\d+)\.", k))})
    ch_mult = [state[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] // ch for i in levels]
    blocks = len({k.split(".")[4] for k in state if k.startswith("encoder.conv_blocks.0.res.")})
    codebook_size, dim = state["quantize.embedding.weight"].shape
    model = LlamaGenVQ(ch, ch_mult, blocks, state["encoder.conv_out.weight"].shape[0], codebook_size, dim, image_size)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise UserError(f"generation.vq_pretrained_path {str(path)!r}: weights missing for {', '.join(missing[:3])}...")
    return model.eval().requires_grad_(False)
