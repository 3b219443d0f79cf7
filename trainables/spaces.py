"""Generation spaces: what the LM emits, one token at a time, after the begin-of-image marker.

A space turns an image into `num_tokens` target tokens and knows whether they
are discrete (codes with code vectors; the head predicts logits over the
codebook) or continuous (feature vectors; the head regresses them):

  patch         continuous pixel patches of the image resized to generation.image_size; decodable
  vq            discrete codes of a VQ tokenizer (trainables.vq); decodable
  siglip, clip  continuous features of a frozen vision tower
  same          the understanding encoder's own space (resolved to one of the above)

Every space gives `encode(images) -> Target` with `features` (B, N, D) (for a
discrete space: the code vectors) and `codes` (B, N) or None, and
`decode(features or codes) -> images | None`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainables.config import EncoderName, GenerationConfig, GenerationSpaceName, UnderstandingConfig
from trainables.encoders import PatchEncoder, TowerEncoder, VQEncoder, build_tower, freeze, unpatchify


@dataclass
class Target:
    features: torch.Tensor  # (B, N, D) continuous features, or the code vectors of `codes`
    codes: torch.Tensor | None  # (B, N) long for a discrete space


class PatchSpace(nn.Module):
    """Pixel patches of the image at generation size: the patch encoder, read as a decodable target."""

    discrete, decodable = False, True

    def __init__(self, image_size: int, patch_size: int):
        super().__init__()
        self.patches = PatchEncoder(image_size, patch_size)
        self.num_tokens, self.feature_dim, self.codebook_size = self.patches.num_tokens, self.patches.feature_dim, 0

    def encode(self, images: torch.Tensor) -> Target:  # (B, 3, H, W) -> (B, N, p*p*3)
        return Target(self.patches(images), None)

    def decode(self, features: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, 3, S, S) in [0, 1]
        return ((unpatchify(features, self.patches.patch_size) + 1.0) / 2.0).clamp(0.0, 1.0)


class VQSpace(nn.Module):
    discrete, decodable = True, True

    def __init__(self, vq: nn.Module):
        super().__init__()
        self.vq = vq
        self.num_tokens, self.feature_dim, self.codebook_size = vq.num_tokens, vq.code_dim, vq.codebook_size

    def encode(self, images: torch.Tensor) -> Target:
        codes = self.vq.encode(images)  # (B, N)
        return Target(self.vq.code_vectors(codes), codes)

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, N, D)
        return self.vq.code_vectors(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:  # (B, N) -> (B, 3, S, S)
        return self.vq.decode(codes)


class FeatureSpace(nn.Module):
    """Features of a frozen encoder (a SigLIP/CLIP tower): not decodable to pixels."""

    discrete, decodable = False, False

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.num_tokens, self.feature_dim, self.codebook_size = encoder.num_tokens, encoder.feature_dim, 0

    def encode(self, images: torch.Tensor) -> Target:
        with torch.no_grad():
            return Target(self.encoder(images), None)

    def decode(self, features: torch.Tensor) -> None:
        return None


def build_space(config: GenerationConfig, understanding: UnderstandingConfig, encoder: nn.Module,
                data_image_size: int, vq: nn.Module | None, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The generation space named by `config.space`; `same` reuses the understanding encoder."""
    name = config.space
    if name == GenerationSpaceName.SAME:
        if isinstance(encoder, PatchEncoder):
            return PatchSpace(encoder.image_size, encoder.patch_size)
        if isinstance(encoder, VQEncoder):
            return VQSpace(encoder.vq)
        if isinstance(encoder, TowerEncoder):
            return FeatureSpace(encoder)
        raise ValueError(f"no generation space for encoder {type(encoder).__name__}")
    if name == GenerationSpaceName.PATCH:
        return PatchSpace(config.image_size, config.patch_size)
    if name == GenerationSpaceName.VQ:
        if vq is None:
            raise ValueError("the vq space needs the VQ tokenizer")
        return VQSpace(vq)
    kind = EncoderName(name.value)  # siglip | clip
    if isinstance(encoder, TowerEncoder) and encoder.kind == kind:
        return FeatureSpace(encoder)  # same tower as the understanding encoder: share it
    image_size = understanding.image_size or data_image_size
    tower = build_tower(kind, image_size, understanding.patch_size, understanding.hidden_size, config.feature_pretrained_path, dtype)
    return FeatureSpace(freeze(TowerEncoder(kind, tower)))


def needs_vq(generation: GenerationConfig, understanding: UnderstandingConfig) -> bool:
    """Whether the run needs a VQ tokenizer (the vq space, the vq encoder, or `same` with it)."""
    return generation.space == GenerationSpaceName.VQ or understanding.encoder == EncoderName.VQ
