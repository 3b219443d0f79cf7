"""Discrete image tokenizers for the `vq` generation space and the `vq` understanding encoder.

CPU default: a k-means codebook over the pixel patches of the (downsampled)
training images. It is the cheapest tokenizer that has what the study needs: a
fixed grid of discrete codes, a code vector per code, and a decoder back to
pixels. The fitted codebook is cached on disk, keyed by everything it depends on.

Paper scale: LlamaGen's `vq_ds16_c2i` (16x16 codes of a 256 px image, codebook
16384, 8-dim code vectors) from a local checkpoint; see `load_vq`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from trainables.chunks import DEFAULT_CHUNK, chunked, full_precision
from trainables.encoders import patchify, resize, to_float_images, unpatchify
from trainables.errors import UserError


class KMeansVQ(nn.Module):
    """Codes = nearest centroid of each p x p patch of the image resized to `image_size`."""

    def __init__(self, codebook: torch.Tensor, image_size: int, patch_size: int):
        super().__init__()
        self.register_buffer("codebook", codebook)  # (K, p*p*3), pixels scaled to [-1, 1]
        self.image_size, self.patch_size = image_size, patch_size
        self.num_tokens = (image_size // patch_size) ** 2
        self.codebook_size, self.code_dim = codebook.shape
        self.bytes_per_image = 3 * 4 * self.num_tokens * self.codebook_size  # the distances to every code
        self.chunk = DEFAULT_CHUNK

    def encode(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) in [0, 1] -> (B, N) codes
        with full_precision(images.device):  # the nearest code must not depend on whether the caller autocasts
            return chunked(self._encode, images.float(), self.chunk)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        patches = patchify(resize(images, self.image_size) * 2.0 - 1.0, self.patch_size)  # (B, N, D)
        return nearest_code(patches, self.codebook)

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, N, D)
        return self.codebook[codes]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, 3, S, S) in [0, 1]
        return ((unpatchify(self.code_vectors(codes), self.patch_size) + 1.0) / 2.0).clamp(0.0, 1.0)


def nearest_code(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:  # (..., D), (K, D) -> (...)
    flat = vectors.reshape(-1, vectors.shape[-1])
    d = (flat * flat).sum(1, keepdim=True) - 2 * flat @ codebook.T + (codebook * codebook).sum(1)  # (M, K)
    return d.argmin(1).reshape(vectors.shape[:-1])


def kmeans(points: torch.Tensor, k: int, seed: int, iters: int = 25) -> torch.Tensor:
    """Lloyd's k-means, initialised on k distinct random points; empty clusters are re-seeded.

    With fewer than k distinct points (toy datasets of a few dozen images) the codebook is every
    distinct point: the codebook size (and the head) shrink to that count.
    """
    g = torch.Generator().manual_seed(seed)
    unique = torch.unique(points, dim=0)
    k = min(k, len(unique))
    centroids = unique[torch.randperm(len(unique), generator=g)[:k]].clone()  # (K, D)
    for _ in range(iters):
        assign = nearest_code(points, centroids)  # (M,)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=k).unsqueeze(1).to(points.dtype)
        empty = counts.squeeze(1) == 0
        centroids = torch.where(empty.unsqueeze(1), centroids, sums / counts.clamp(min=1))
        if empty.any():
            centroids[empty] = points[torch.randint(len(points), (int(empty.sum()),), generator=g)]
    return centroids


def fit_kmeans_vq(images: torch.Tensor, image_size: int, patch_size: int, codebook_size: int, seed: int,
                  cache_dir: Path | None, fingerprint: str) -> KMeansVQ:
    """Fit (or load from `cache_dir`) a k-means codebook on the training images: stored uint8 (B, H, W, 3),
    converted only when the codebook is fitted, or float (B, 3, H, W)."""
    if image_size % patch_size:
        raise UserError(f"generation.patch_size {patch_size} must divide generation.image_size {image_size}")
    key = hashlib.sha256(json.dumps([fingerprint, image_size, patch_size, codebook_size, seed, len(images)]).encode()).hexdigest()[:16]
    path = cache_dir / f"kmeans-vq-{key}.pt" if cache_dir else None
    codebook = _cached_codebook(path, (codebook_size, patch_size * patch_size * 3)) if path is not None else None
    if codebook is None:
        if images.dtype == torch.uint8:
            images = to_float_images(images)
        patches = patchify(resize(images, image_size) * 2.0 - 1.0, patch_size).reshape(-1, patch_size * patch_size * 3)
        codebook = kmeans(patches, codebook_size, seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(codebook, tmp)
            tmp.replace(path)  # atomic: concurrent trials may fit the same codebook
    return KMeansVQ(codebook, image_size, patch_size)


def _cached_codebook(path: Path, shape: tuple[int, int]) -> torch.Tensor | None:
    """The cached codebook, or None when there is none or the file is not one (it is then refitted)."""
    if not path.is_file():
        return None
    try:
        codebook = torch.load(path, weights_only=True)  # tensors only: a planted pickle runs no code
    except Exception:  # noqa: BLE001 - a damaged or foreign cache file is refitted, whatever torch raised
        return None
    return codebook if isinstance(codebook, torch.Tensor) and tuple(codebook.shape) == shape else None


def load_vq(path: str, image_size: int) -> nn.Module:
    """A LlamaGen-style VQ checkpoint from a local path (paper scale), encoding images at `image_size`."""
    from trainables.llamagen import load_llamagen_vq

    return load_llamagen_vq(path, image_size)
