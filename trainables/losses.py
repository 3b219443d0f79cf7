"""The two losses of the unified VLM, as (sum, count) pairs.

Returning sums and counts, not means, lets the training loop divide by the
*global* count across DDP workers, so that N workers compute exactly the
gradient of one worker on the same global batch (a per-worker mean would
weight tokens by which worker holds them).

  text:  cross-entropy of next-token logits on answer tokens only (labels -100 elsewhere; the LM head runs there only)
  image: cosine (1 - cos of centred vectors), mse (mean over dims), or ce (over the codebook)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from trainables.config import ImageLoss

IGNORE = -100


def text_loss(lm_head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor, labels: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (B, T, H), labels (B, T): position t predicts labels[t + 1]. -> (sum, count).

    The head runs on the labelled positions only: answers are a few tokens of each sequence, and (B, T, V)
    logits over a real LM's vocabulary (32,000 words) would dwarf the rest of the step's memory and time.
    """
    hidden, labels = hidden[:, :-1], labels[:, 1:]  # (B, T-1, H), (B, T-1)
    keep = labels != IGNORE
    logits = lm_head(hidden[keep])  # (N, V)
    if logits.shape[0] == 0:
        return logits.sum() * 0.0, keep.sum()
    return F.cross_entropy(logits.float(), labels[keep], reduction="sum"), keep.sum()


def image_loss(kind: ImageLoss, predicted: torch.Tensor, target: torch.Tensor, centre: torch.Tensor | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """predicted (M, D) features or (M, K) logits; target (M, D) features or (M,) codes. -> (sum, count).

    cosine: `centre` (D,) is subtracted from both sides first; raw pixel patches share a
    large common component and their raw cosine is near 1 whatever the image (FIELD-NOTES).
    """
    count = torch.tensor(predicted.shape[0], device=predicted.device)
    if predicted.shape[0] == 0:
        return predicted.sum() * 0.0, count
    predicted = predicted.float()
    if kind == ImageLoss.CE:
        return F.cross_entropy(predicted, target, reduction="sum"), count
    target = target.float()
    if kind == ImageLoss.MSE:
        return F.mse_loss(predicted, target, reduction="none").mean(-1).sum(), count
    if centre is not None:
        predicted, target = predicted - centre, target - centre
    return (1.0 - F.cosine_similarity(predicted, target, dim=-1, eps=1e-6)).sum(), count
