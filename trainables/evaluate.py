"""Evaluation on the test split: free-running outputs scored by trainables.scoring.

  VQA        every turn of every test conversation, asked after the earlier turns (with their true
             answers); greedy answer -> score per attribute and overall. Images matching a
             `data.hide_from_understanding` rule are also scored apart (`test/vqa_hidden/...`).
  captions   greedy caption -> fraction of the mentioned attributes stated correctly.
  generation the prompt and reply, then <boi>; the LM generates every image token from its own
             previous ones. Scored against the test image's true tokens (cosine after centring,
             token accuracy for codes) and by the attribute probe on the mentioned attributes;
             decodable spaces also by a Fréchet distance to the true test images in a fixed
             feature space (the images at FRECHET_SIDE x FRECHET_SIDE RGB pixels); discrete spaces
             also by the weather icon drawn in the requested corner (trainables.icons). The final
             evaluation reads that icon teacher-forced too (`test/gen/icon_forced/...`: each cell
             predicted after the true cells before it, as in training): where both are low, the
             model has not learnt the icon; where only free running is, its own earlier cells mislead it.

The constant-answer baselines, the probe's and the icon reader's constant baselines
(every generated image the training mean, or each cell's most frequent code) and the
probe's accuracy on true tokens do not depend on the model and are computed once.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables import scoring
from trainables.data.records import Task, WatchFace, is_hidden
from trainables.encoders import to_float_images
from trainables.icons import IconReader, score_icons
from trainables.mlflow_names import Metric, prefixed
from trainables.model import Generated
from trainables.probe import fit_probe
from trainables.rundata import RunData
from trainables.sequences import Example, collate, generation_example, teacher_forced, understanding_example
from trainables.tokenizer import TextTokenizer

EVAL_BATCH = 64
FRECHET_SIDE = 8
"""Fréchet features: images area-averaged to 8 x 8 RGB (192 values): a fixed space shared by every
generation space and run, with fewer dimensions than test images so the covariances are full rank."""


def frechet_features(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [0, 1] -> (N, 3 * FRECHET_SIDE**2)."""
    small = torch.nn.functional.adaptive_avg_pool2d(images.float(), FRECHET_SIDE)
    return small.reshape(len(images), -1).cpu().numpy()


@dataclass(frozen=True)
class Shard:
    """This worker's share of an evaluation: every `world`-th prompt from `rank`. Each worker answers its share;
    `gather` puts every worker's answers back in prompt order, on every worker (a collective: all call it)."""

    rank: int = 0
    world: int = 1

    def mine(self, items: list) -> list:
        return items[self.rank :: self.world]

    def gather(self, outputs: list) -> list:
        if self.world == 1:
            return outputs
        parts: list[list] = [[] for _ in range(self.world)]
        torch.distributed.all_gather_object(parts, outputs)  # pickled through the backend's own device (NCCL: the GPU)
        merged: list = [None] * sum(len(part) for part in parts)
        for rank, part in enumerate(parts):
            merged[rank :: self.world] = part
        return merged


@dataclass
class Prompt:
    example: Example
    face: WatchFace
    attribute: str | None = None  # VQA: the attribute asked
    mentioned: tuple[str, ...] = ()  # caption / generation: attributes of the reference
    hidden: bool = False  # the image matches a hide rule


@dataclass
class GeneratedTokens:
    """An evaluation's free-running generations, every prompt's, in prompt order."""

    features: torch.Tensor  # (P, Ng, Dg) float32, CPU
    codes: torch.Tensor | None  # (P, Ng) for a discrete space
    forced: torch.Tensor | None  # (P, Ng) teacher-forced argmax codes (final evaluation, discrete spaces)


class Evaluator:
    def __init__(self, data: RunData, tok: TextTokenizer, n_und: int, cache_dir: Path | None, shard: Shard = Shard()):
        self.data, self.tok, self.cache_dir, self.shard = data, tok, cache_dir, shard
        rows = data.test.row()
        self.vqa: list[Prompt] = []
        for r in data.test.records[Task.VQA]:
            for k, turn in enumerate(r.turns):
                turns = [(t.question, t.answer) for t in r.turns[:k]] + [(turn.question, None)]
                example = understanding_example(tok, turns, rows[r.image_id], n_und)
                self.vqa.append(Prompt(example, r.face, turn.attribute, hidden=is_hidden(r.face, data.hide_rules)))
        self.captions = [
            Prompt(understanding_example(tok, [(r.turns[0].question, None)], rows[r.image_id], n_und), r.face, mentioned=r.mentioned)
            for r in data.test.records[Task.CAPTION]
        ]
        self.generations = [
            Prompt(generation_example(tok, r.turns[0].question, r.turns[0].answer, rows[r.image_id], 0), r.face, mentioned=r.mentioned)
            for r in data.test.records[Task.GENERATION]
        ]
        self.max_new_tokens = {task: data.max_answer_tokens(tok, task) for task in (Task.VQA, Task.CAPTION)}
        self.probe = None
        self.icons: IconReader | None = None  # discrete spaces on smart-watch data
        self._true_tokens: tuple[torch.Tensor, torch.Tensor | None] | None = None

    # -- model-independent ------------------------------------------------------------------
    def baselines(self) -> dict[str, float]:
        """Constant answers (most frequent training answer per attribute) scored like the model."""
        train = [(t.attribute, t.answer, r.face) for r in self.data.vqa_reference for t in r.turns]
        test = [(p.attribute, "", p.face) for p in self.vqa]
        metrics = prefixed(scoring.constant_answer_baseline(train, test), Metric.BASELINE_VQA)
        if self.captions:
            captions = [(p.face, p.mentioned) for p in self.captions]
            metrics[Metric.BASELINE_CAPTION] = scoring.constant_caption_baseline(train, captions)
        return metrics

    def true_tokens(self, model) -> tuple[torch.Tensor, torch.Tensor | None]:
        """True tokens of every test image in the space's own coordinates: (N, Ng, Dg), codes (N, Ng).
        Encoded once a run: the generation space never trains (the probe is fitted on these too)."""
        if self._true_tokens is None:
            self._true_tokens = self._encode_test_images(model)
        return self._true_tokens

    def _encode_test_images(self, model) -> tuple[torch.Tensor, torch.Tensor | None]:
        chunks, codes = [], []
        with torch.no_grad():
            for start in range(0, len(self.data.test.images), EVAL_BATCH):
                images = to_float_images(self.data.test.images[start : start + EVAL_BATCH]).to(_device(model))
                target = model.space.encode(images)
                chunks.append(target.features.float().cpu())
                codes.append(target.codes.cpu() if target.codes is not None else None)
        return torch.cat(chunks), (torch.cat(codes) if model.space.discrete else None)

    def fit_probe(self, model) -> dict[str, float]:
        """Fit (or load) the attribute probe on true test tokens, and the icon reader on their codes (discrete
        spaces); -> the probe's held-out accuracy `probe/true/...`."""
        features, codes = self.true_tokens(model)
        faces = self._image_faces()
        if codes is not None and all(face is not None for face in faces):
            self.icons = IconReader.fit(codes, faces)
        self.probe, held_out = fit_probe(features.numpy(), faces, self.cache_dir)
        metrics = scoring.probe_accuracy(self.probe, features.numpy()[held_out], faces[held_out])
        return prefixed(metrics, Metric.PROBE_TRUE)

    def probe_baseline(self, model, sample_tokens) -> dict[str, float]:
        """The probe on a constant generation, `baseline/gen/probe/...`: every prompt answered with the
        training images' mean tokens (continuous spaces) or each cell's most frequent code (discrete).
        `sample_tokens`: a sample of training images in the space (`UnifiedVLM.fit_stats` returns them)."""
        if self.probe is None or not self.generations:
            return {}
        if sample_tokens.codes is not None:
            mode = torch.mode(sample_tokens.codes, dim=0).values  # (Ng,) most frequent code of each cell
            constant = model.space.code_vectors(mode[None].to(_device(model)))  # (1, Ng, Dg)
        else:
            constant = sample_tokens.features.mean(0, keepdim=True)  # (1, Ng, Dg)
        read = self.probe(constant.float().cpu().numpy())
        items = [(a, read[a][0], p.face) for p in self.generations for a in p.mentioned]
        metrics = prefixed(scoring.score_vqa(items), Metric.BASELINE_GEN_PROBE)
        if self.icons is not None and sample_tokens.codes is not None:
            same = mode[None].expand(len(self.generations), -1).cpu()
            metrics |= prefixed(self._icons(same, self.generations), Metric.BASELINE_GEN_ICON)
        return metrics

    def _icons(self, codes: torch.Tensor, prompts: list[Prompt]) -> dict[str, float]:
        return score_icons(self.icons, codes, [p.face for p in prompts], [p.mentioned for p in prompts])

    def _image_faces(self) -> list[WatchFace]:
        faces: dict[str, WatchFace] = {}
        for records in self.data.test.records.values():
            for r in records:
                faces.setdefault(r.image_id, r.face)
        return [faces[image_id] for image_id in self.data.test.image_ids]

    # -- model-dependent --------------------------------------------------------------------
    @torch.no_grad()
    def run(self, model, limit: int | None = None, tasks: Collection[Task] = tuple(Task),
            final: bool = False) -> tuple[dict[str, float], torch.Tensor | None]:
        """Metrics on (the first `limit` prompts per task of) the test split's `tasks`, and decoded generations.
        `final` adds the diagnostics read once a run (the teacher-forced icon read). Every worker of a run calls it
        and answers its shard of the prompts; the first worker gets the metrics, the others ({}, None)."""
        was_training = model.training
        model.eval()
        vqa = self.vqa[:limit] if Task.VQA in tasks else []
        answers = self.shard.gather(self._answers(model, self.shard.mine(vqa), self.max_new_tokens[Task.VQA])) if vqa else []
        captions = self.captions[:limit] if Task.CAPTION in tasks else []
        texts = self.shard.gather(self._answers(model, self.shard.mine(captions), self.max_new_tokens[Task.CAPTION])) if captions else []
        generations = self.generations[:limit] if Task.GENERATION in tasks else []
        generated = self._generate(model, generations, final) if generations else None
        metrics: dict[str, float] = {}
        pictures = None
        if self.shard.rank == 0:
            metrics, pictures = self._score(model, vqa, answers, captions, texts, generations, generated)
        model.train(was_training)
        return metrics, pictures

    def _score(self, model, vqa: list[Prompt], answers: list[str], captions: list[Prompt], texts: list[str],
               generations: list[Prompt], generated: GeneratedTokens | None) -> tuple[dict[str, float], torch.Tensor | None]:
        metrics: dict[str, float] = {}
        if vqa:
            metrics |= prefixed(scoring.score_vqa((p.attribute, a, p.face) for p, a in zip(vqa, answers)), Metric.VQA)
            hidden = [(p.attribute, a, p.face) for p, a in zip(vqa, answers) if p.hidden]
            if self.data.hide_rules and hidden:
                metrics |= prefixed(scoring.score_vqa(hidden), Metric.VQA_HIDDEN)
        if captions:
            metrics[Metric.CAPTION] = float(np.mean([scoring.score_caption(t, p.face, p.mentioned) for p, t in zip(captions, texts)]))
        pictures = None
        if generated is not None:
            gen_metrics, pictures = self._generation(model, generations, generated)
            metrics |= gen_metrics
        return metrics, pictures

    def _answers(self, model, prompts: list[Prompt], max_new_tokens: int) -> list[str]:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].example.ids))  # little padding
        out: list[str] = [""] * len(prompts)
        device = _device(model)
        for start in range(0, len(order), EVAL_BATCH):
            chunk = order[start : start + EVAL_BATCH]
            batch = collate([prompts[i].example for i in chunk], self.data.test.images, self.tok, left_pad=True).to(device)
            ids = model.generate_text(batch.input_ids, batch.attention_mask, batch.und_images, max_new_tokens)
            for i, row in zip(chunk, ids):
                out[i] = self.tok.decode(row)
        return out

    def _generate(self, model, prompts: list[Prompt], final: bool) -> GeneratedTokens:
        """Free-running tokens of every prompt (this worker's shard, then gathered), and at the end the
        teacher-forced codes too."""
        device = _device(model)
        features, codes = [], []
        mine = self.shard.mine(prompts)
        for start in range(0, len(mine), EVAL_BATCH):
            chunk = mine[start : start + EVAL_BATCH]
            batch = collate([p.example for p in chunk], self.data.test.images, self.tok, left_pad=True).to(device)
            generated = model.generate_image(batch.input_ids, batch.attention_mask)
            features += list(generated.features.float().cpu())
            codes += list(generated.codes.cpu()) if generated.codes is not None else []
        features, codes = self.shard.gather(features), self.shard.gather(codes)
        forced = None
        if final and model.space.discrete:  # the same on every worker: the gather is a collective
            forced = torch.stack(self.shard.gather(list(self._forced_codes(model, mine))))
        return GeneratedTokens(torch.stack(features), torch.stack(codes) if codes else None, forced)

    def _generation(self, model, prompts: list[Prompt], generated: GeneratedTokens) -> tuple[dict[str, float], torch.Tensor | None]:
        device = _device(model)
        predicted = generated.features
        true_features, true_codes = self.true_tokens(model)
        rows = [p.example.image_index for p in prompts]
        metrics = {Metric.GEN_COSINE: scoring.cosine_to_target(predicted, true_features[rows])}
        if true_codes is not None:
            metrics[Metric.GEN_TOKEN_ACCURACY] = scoring.token_accuracy(generated.codes, true_codes[rows])
        if self.probe is not None:
            read = self.probe(predicted.numpy())
            items = [(a, read[a][i], p.face) for i, p in enumerate(prompts) for a in p.mentioned]
            metrics |= prefixed(scoring.score_vqa(items), Metric.GEN_PROBE)
        if self.icons is not None and true_codes is not None:
            metrics |= prefixed(self._icons(generated.codes, prompts), Metric.GEN_ICON)
            if generated.forced is not None:
                metrics |= prefixed(self._icons(generated.forced, prompts), Metric.GEN_ICON_FORCED)
        pictures = model.decode_images(Generated(predicted.to(device), generated.codes.to(device) if true_codes is not None else None))
        if pictures is not None and len(prompts) > 1:
            truth = to_float_images(self.data.test.images[rows])
            metrics[Metric.GEN_FRECHET] = scoring.frechet_distance(frechet_features(pictures), frechet_features(truth))
        return metrics, (None if pictures is None else pictures.float().cpu())

    def _forced_codes(self, model, prompts: list[Prompt]) -> torch.Tensor:
        device, n_gen = _device(model), model.space.num_tokens
        codes = [torch.zeros((0, n_gen), dtype=torch.long)]
        for start in range(0, len(prompts), EVAL_BATCH):
            chunk = [teacher_forced(self.tok, p.example, n_gen) for p in prompts[start : start + EVAL_BATCH]]
            codes.append(model.forced_codes(collate(chunk, self.data.test.images, self.tok).to(device)).cpu())
        return torch.cat(codes)


def _device(model) -> torch.device:
    return next(model.parameters()).device

