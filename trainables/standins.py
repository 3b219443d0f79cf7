"""Tiny stand-ins for the paper's pretrained checkpoints, saved the way the real ones ship.

A rehearsal (`uvlm rehearse`) and the tests run the paper presets on these instead of
Vicuna-7B, SigLIP-base and LlamaGen's VQ, so every loading path a GPU run takes is
exercised on a laptop:

  lm/        a Llama causal LM saved in float16 (Vicuna-7B v1.5's config says float16), with
             only a sentencepiece `tokenizer.model` beside it (no tokenizer.json), as Vicuna ships
  siglip/    a full SiglipModel (vision and text towers), as siglip-base-patch16-224 ships;
             the run loads its vision half
  vq.pt      a LlamaGen VQ checkpoint: {"model": state dict, "args": argparse.Namespace, "steps": int},
             as LlamaGen's trainer writes it

Shapes are tiny; the file formats, dtypes and contents' structure are the real ones.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path

import torch

# Texts the stand-in tokenizer is fitted on: the study's words, so answers tokenise into short pieces.
CORPUS = [
    "What time is shown on the watch? It is 03:07:59.",
    "What is the weather? It is sunny. It is cloudy. It is raining.",
    "How much battery is left? The battery is at 42%. 100% 0% 57% 88%",
    "Where is the weather icon? Where is the battery? top-left top-right bottom-left bottom-right corner",
    "Describe this image. Draw a smart watch showing 11:45:12 with the battery at 63% in the bottom-right corner.",
    "Here is the image. Sure, here is a smart watch.",
]


@dataclass(frozen=True)
class StandIns:
    lm: Path
    siglip: Path
    vq: Path

    def overrides(self) -> dict[str, str]:
        """The config fields that point a paper preset at these folders."""
        return {"lm.pretrained_path": str(self.lm), "understanding.pretrained_path": str(self.siglip),
                "generation.vq_pretrained_path": str(self.vq), "generation.feature_pretrained_path": str(self.siglip)}


def save_standins(root: Path, image_size: int = 64, generation_size: int = 32) -> StandIns:
    """Write the three stand-ins under `root` (once: existing ones are reused) and return their paths."""
    root.mkdir(parents=True, exist_ok=True)
    found = StandIns(root / "lm", root / "siglip", root / "vq.pt")
    if not (found.lm / "tokenizer.model").is_file():
        save_lm(found.lm)
    if not (found.siglip / "config.json").is_file():
        save_siglip(found.siglip, image_size)
    if not found.vq.is_file():
        save_llamagen(found.vq, generation_size)
    return found


def save_lm(folder: Path, hidden: int = 64, layers: int = 2, heads: int = 4, intermediate: int | None = None,
            vocabulary: int | None = None, dtype: torch.dtype = torch.float16, device: str = "cpu") -> None:
    """A Llama in `dtype` with a sentencepiece tokenizer.model (byte fallback, <unk>=0 <s>=1 </s>=2, as Llama's).
    `vocabulary`: the embedding rows (None = the tokenizer's pieces; Llama's 32,000 when a benchmark wants its cost)."""
    import sentencepiece
    import transformers

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=400, model_type="bpe", byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    vocab = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).vocab_size()
    config = transformers.LlamaConfig(vocab_size=max(vocab, vocabulary or 0), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                                      max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):
        lm = transformers.LlamaForCausalLM(config).to(dtype)
    lm.save_pretrained(folder)
    (folder / "tokenizer.model").write_bytes(model.getvalue())


def save_siglip(folder: Path, image_size: int = 64, hidden: int = 32, layers: int = 2, heads: int = 2) -> None:
    """A full SiglipModel (vision + text), as google/siglip-base-patch16-224 ships (there: 768 wide, 12 layers, 12 heads)."""
    import transformers

    vision = dict(hidden_size=hidden, intermediate_size=4 * hidden if layers > 2 else 2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=image_size, patch_size=16)
    text = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    torch.manual_seed(0)
    transformers.SiglipModel(transformers.SiglipConfig(vision_config=vision, text_config=text)).save_pretrained(folder)


def save_llamagen(path: Path, image_size: int = 32, ch: int = 32, blocks: int = 1, z_channels: int = 32,
                  codebook_size: int = 64) -> None:
    """LlamaGen's VQ layout (5 levels: 16x downsampling, 8-dim codes), with its trainer's extras; tiny by default
    (vq_ds16_c2i: ch 128, 2 blocks, z 256, 16,384 codes)."""
    from trainables.llamagen import LlamaGenVQ

    torch.manual_seed(0)
    vq = LlamaGenVQ(ch=ch, ch_mult=[1, 1, 2, 2, 4], blocks=blocks, z_channels=z_channels, codebook_size=codebook_size, dim=8,
                    image_size=image_size)
    args = argparse.Namespace(vq_model="VQ-16", codebook_size=codebook_size, codebook_embed_dim=8, image_size=image_size)
    torch.save({"model": vq.state_dict(), "steps": 1000, "args": args}, path)
