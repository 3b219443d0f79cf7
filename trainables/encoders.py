"""Understanding encoders: image -> a sequence of feature vectors the LM reads (after the projector).

Each encoder is frozen (the paper freezes them) and maps float images
(B, 3, H, W) in [0, 1] to features (B, N, D); `num_tokens` = N and
`feature_dim` = D are known before any image is seen, so the sequence layout
can reserve N placeholder tokens.

  patch   raw pixel patches (scaled to [-1, 1]), no weights at all
  siglip  transformers SiglipVisionModel, penultimate layer, patch tokens
  clip    transformers CLIPVisionModel, penultimate layer, CLS + patch tokens
  vq      code vectors of the generation VQ tokenizer (trainables.vq)

The names are parsed once into `EncoderName` (config.py); `build_encoder` is
the one place that maps a name to a class.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainables.chunks import DEFAULT_CHUNK, chunked
from trainables.config import EncoderName, UnderstandingConfig
from trainables.errors import UserError


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1]."""
    return images.permute(0, 3, 1, 2).float() / 255.0


def resize(images: torch.Tensor, size: int) -> torch.Tensor:  # (B, 3, H, W) -> (B, 3, size, size)
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, S, S) -> (B, (S/p)^2, p*p*3), row-major over the patch grid."""
    B, C, S, _ = images.shape
    g = S // patch
    x = images.reshape(B, C, g, patch, g, patch).permute(0, 2, 4, 3, 5, 1)  # (B, g, g, p, p, C)
    return x.reshape(B, g * g, patch * patch * C)


def unpatchify(patches: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, N, p*p*3) -> (B, 3, S, S), the inverse of patchify."""
    B, N, _ = patches.shape
    g = int(round(N**0.5))
    x = patches.reshape(B, g, g, patch, patch, 3).permute(0, 5, 1, 3, 2, 4)  # (B, C, g, p, g, p)
    return x.reshape(B, 3, g * patch, g * patch)


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


class PatchEncoder(nn.Module):
    """Raw pixel patches of the image at `image_size`: the simplest, perfectly invertible encoder."""

    def __init__(self, image_size: int, patch_size: int):
        super().__init__()
        if image_size % patch_size:
            raise UserError(f"patch size {patch_size} must divide the image size {image_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.num_tokens = (image_size // patch_size) ** 2
        self.feature_dim = patch_size * patch_size * 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, N, p*p*3)
        return patchify(resize(images, self.image_size) * 2.0 - 1.0, self.patch_size)


TOWERS = {
    EncoderName.SIGLIP: ("SiglipVisionConfig", "SiglipVisionModel", False),
    EncoderName.CLIP: ("CLIPVisionConfig", "CLIPVisionModel", True),
}


def build_tower(kind: EncoderName, image_size: int, patch_size: int, hidden_size: int, pretrained_path: str | None,
                dtype: torch.dtype = torch.float32) -> nn.Module:
    """A frozen transformers vision model in `dtype`: random from a small config, or from a local folder (a full
    SigLIP/CLIP checkpoint, vision and text, loads its vision half)."""
    import transformers

    config_name, model_name, _ = TOWERS[kind]
    model_cls = getattr(transformers, model_name)
    if pretrained_path is not None:
        folder = Path(pretrained_path)
        if not (folder / "config.json").is_file():
            raise UserError(f"{kind.value} pretrained path {str(folder)!r} has no config.json (expected a saved {model_name})")
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
            raise UserError(f"{kind.value} pretrained path {str(folder)!r} has no weights (*.safetensors or *.bin)")
        model = model_cls.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    else:
        if image_size % patch_size:
            raise UserError(f"understanding.patch_size {patch_size} must divide the image size {image_size}")
        config = getattr(transformers, config_name)(
            hidden_size=hidden_size,
            intermediate_size=4 * hidden_size,
            num_hidden_layers=2,
            num_attention_heads=max(1, hidden_size // 32),
            image_size=image_size,
            patch_size=patch_size,
        )
        model = model_cls(config).to(dtype)
    return freeze(model)


class TowerEncoder(nn.Module):
    """Penultimate-layer features of a frozen SigLIP/CLIP vision model (CLIP keeps its CLS token)."""

    def __init__(self, kind: EncoderName, tower: nn.Module):
        super().__init__()
        self.kind, self.tower = kind, tower
        config = tower.config
        self.image_size = config.image_size
        grid = config.image_size // config.patch_size
        self.num_tokens = grid * grid + (1 if TOWERS[kind][2] else 0)
        self.feature_dim = config.hidden_size
        # Peak activations per image: every layer's hidden states kept (output_hidden_states), one layer's
        # attention weights and MLP, in float32.
        n, width = self.num_tokens, config.hidden_size
        self.bytes_per_image = 4 * n * ((config.num_hidden_layers + 1) * width + 2 * config.num_attention_heads * n
                                        + 2 * config.intermediate_size)
        self.chunk = DEFAULT_CHUNK

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, N, D)
        return chunked(self._features, images, self.chunk)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        if not len(images):  # a batch with no image of this kind (transformers' towers cannot take 0 images)
            return images.new_zeros((0, self.num_tokens, self.feature_dim))
        x = (resize(images, self.image_size) - 0.5) / 0.5
        with torch.no_grad():
            out = self.tower(pixel_values=x.to(self.tower.dtype), output_hidden_states=True)
        return out.hidden_states[-2].float()  # what trains downstream (projectors) is float32


class VQEncoder(nn.Module):
    """Code vectors of the generation VQ tokenizer: understanding and generation share one discrete space."""

    def __init__(self, vq: nn.Module):
        super().__init__()
        self.vq = vq
        self.num_tokens, self.feature_dim = vq.num_tokens, vq.code_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, N, code_dim)
        return self.vq.code_vectors(self.vq.encode(images))


def build_encoder(config: UnderstandingConfig, data_image_size: int, vq: nn.Module | None,
                  dtype: torch.dtype = torch.float32) -> nn.Module:
    """The understanding encoder named by `config.encoder`, frozen; a vision tower's weights in `dtype`."""
    image_size = config.image_size or data_image_size
    if config.encoder == EncoderName.PATCH:
        encoder = PatchEncoder(image_size, config.patch_size)
    elif config.encoder in TOWERS:
        tower = build_tower(config.encoder, image_size, config.patch_size, config.hidden_size, config.pretrained_path, dtype)
        encoder = TowerEncoder(config.encoder, tower)
    elif config.encoder == EncoderName.VQ:
        if vq is None:
            raise ValueError("the vq encoder needs the VQ tokenizer")
        encoder = VQEncoder(vq)
    else:  # unreachable: the name was parsed into EncoderName at the boundary
        raise ValueError(config.encoder)
    return freeze(encoder)
