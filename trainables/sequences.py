"""Records -> token sequences, and sequences -> padded batches (the data side of the model's contract).

Layouts (placeholders are the `<image>` token; their embeddings are replaced by the model):

  VQA / caption   <bos> <image>*Nu  ( <user> question <assistant> answer <eos> )+
  generation      <bos> <user> prompt <assistant> reply <boi> <image>*Ng

Labels (text cross-entropy) are the answer tokens and their <eos>, and for
generation the reply and the <boi> marker. The hidden state at <boi> and at the
first Ng-1 generated positions predicts the next image token.

Task mixing is data: a batch holds whatever records the run's training set
has, and one forward pass serves them all.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from trainables.encoders import to_float_images
from trainables.losses import IGNORE
from trainables.tokenizer import TextTokenizer


@dataclass
class Example:
    ids: list[int]
    labels: list[int]
    image_index: int  # row of the image in the split's image tensor
    understanding: bool  # the image is read (VQA/caption) ...
    generation: bool  # ... or generated after <boi>


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) long, 0 = padding
    labels: torch.Tensor  # (B, T) long, IGNORE where no text loss
    und_mask: torch.Tensor  # (B, T) bool, understanding image placeholders
    und_images: torch.Tensor  # (Bu, 3, H, W) float in [0, 1], images of the rows with und placeholders, row order
    gen_mask: torch.Tensor  # (B, T) bool, generated image token inputs
    gen_pred_mask: torch.Tensor  # (B, T) bool, positions whose hidden state predicts an image token
    gen_images: torch.Tensor  # (Bg, 3, H, W) float, target images of the generation rows, row order

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def turn_tokens(tok: TextTokenizer, question: str, answer: str | None) -> tuple[list[int], list[int]]:
    """<user> question <assistant> [answer <eos>] with labels on the answer part (the role markers in the
    LM's own conversation format for a pretrained tokenizer)."""
    prompt = [*tok.user_prefix, *tok.encode(question), *tok.assistant_prefix]
    if answer is None:
        return prompt, [IGNORE] * len(prompt)
    reply = [*tok.encode(answer), tok.eos]
    return prompt + reply, [IGNORE] * len(prompt) + reply


def understanding_example(tok: TextTokenizer, turns: list[tuple[str, str | None]], image_index: int, n_und: int) -> Example:
    """turns: (question, answer) pairs of a VQA conversation or a caption; answer None ends a prompt."""
    ids, labels = [tok.bos] + [tok.image] * n_und, [IGNORE] * (1 + n_und)
    for question, answer in turns:
        t_ids, t_labels = turn_tokens(tok, question, answer)
        ids += t_ids
        labels += t_labels
    return Example(ids, labels, image_index, True, False)


def generation_example(tok: TextTokenizer, prompt: str, reply: str, image_index: int, n_gen: int) -> Example:
    t_ids, t_labels = turn_tokens(tok, prompt, None)
    r_ids = [*tok.encode(reply), tok.boi]
    ids = [tok.bos, *t_ids, *r_ids] + [tok.image] * n_gen
    labels = [IGNORE, *t_labels, *r_ids] + [IGNORE] * n_gen
    return Example(ids, labels, image_index, False, True)


def teacher_forced(tok: TextTokenizer, prompt: Example, n_gen: int) -> Example:
    """A generation prompt (ending in <boi>) followed by its image's n_gen placeholders: the training sequence."""
    return Example([*prompt.ids, *[tok.image] * n_gen], [*prompt.labels, *[IGNORE] * n_gen], prompt.image_index, False, True)


def collate(examples: list[Example], images: torch.Tensor, tok: TextTokenizer, left_pad: bool = False) -> Batch:
    """Pad to the longest example; images: uint8 (N, H, W, 3) of the split, indexed by Example.image_index."""
    pad_id = tok.pad
    T = max(len(e.ids) for e in examples)
    B = len(examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    und = torch.zeros((B, T), dtype=torch.bool)
    gen = torch.zeros((B, T), dtype=torch.bool)
    gen_pred = torch.zeros((B, T), dtype=torch.bool)
    for row, e in enumerate(examples):
        n = len(e.ids)
        cols = slice(T - n, T) if left_pad else slice(0, n)
        ids[row, cols] = torch.tensor(e.ids)
        labels[row, cols] = torch.tensor(e.labels)
        attn[row, cols] = 1
        placeholders = np.flatnonzero(np.asarray(e.ids) == tok.image) + cols.start
        if e.understanding:
            und[row, placeholders] = True
        if e.generation and len(placeholders):
            gen[row, placeholders] = True
            gen_pred[row, placeholders - 1] = True  # <boi> and each image token but the last predict the next one
    und_rows = [e.image_index for e in examples if e.understanding]
    gen_rows = [e.image_index for e in examples if e.generation]
    return Batch(ids, attn, labels, und, to_float_images(images[und_rows]), gen, gen_pred, to_float_images(images[gen_rows]))

