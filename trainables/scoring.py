"""Scorers: how right an answer, a caption or a generated image is about a smart-watch face.

Every score lies in [0, 1] (cosine in [-1, 1]) and is computed against the image's
`WatchFace`, never against a reference string, so paraphrased answers score the same.

Parsing rules (one parser per attribute, shared by VQA answers, captions and the baselines).
The text is lower-cased first, so case, surrounding whitespace and trailing punctuation
never matter; the *first* candidate in the text decides, and a first candidate that is
out of range makes the answer unparsable (it is not skipped in favour of a later one):
- weather: the first of WEATHERS as a whole word ("raining.", "it is raining" -> raining;
  "rainy" and "rain" are not words of the vocabulary and do not parse).
- corners: the first "top|bottom" + "left|right" joined by a hyphen, spaces or nothing
  ("top-left", "Top left", "topleft" -> top-left).
- time: the first h:mm:ss or hh:mm:ss with hour 0-12 (12 reads as 0), minute and second
  0-59; "03:07" (no seconds) and "99:99:99" are unparsable.
- battery: the first whole number that is not part of a time or a decimal, with or without
  a following "%" or "percent"; it must be 0-100 ("42%", "42 %", "42" -> 42; "150%" -> unparsable).
  In captions the number must carry "%" or "percent", so that other numbers are not read as it.
An unparsable answer scores 0.

Per-attribute scores (docs/STUDY.md, "Scoring"): weather and corners 1 if equal else 0;
battery 1 - |pred - true| / 100; time 1 - (e_h/6 + e_m/30 + e_s/30) / 3 with circular
errors (hours mod 12, minutes and seconds mod 60), so each term is at most 1.
"""

from __future__ import annotations

import re
from bisect import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from trainables.data.records import ATTRIBUTES, WEATHERS, WatchFace

VQAItem = tuple[str, str, WatchFace]
"""(attribute asked, predicted answer text, ground truth of the image)."""

Time = tuple[int, int, int]
Value = Time | int | str  # a parsed answer: (h, m, s) for time, int for battery, a word otherwise


# ---------------------------------------------------------------------------
# Parsing: text -> value of one attribute, or None when unparsable

_WEATHER = re.compile(r"\b(" + "|".join(WEATHERS) + r")\b")
_CORNER = re.compile(r"\b(top|bottom)[\s-]*(left|right)\b")
# Not glued to other digits or colons, so "123:45:67" or "1:02:03:04" do not yield a time.
_TIME = re.compile(r"(?<![\d:])(\d{1,2}):(\d{2}):(\d{2})(?![\d:])")
# A whole number that is not part of a time ("03:07") or a decimal ("42.5").
_NUMBER = re.compile(r"(?<![\d:.])(\d+)(?![\d:]|\.\d)\s*(%|percent\b)?")


def parse_time(text: str) -> Time | None:
    """The first h:mm:ss in `text` as (hour mod 12, minute, second); None if absent or out of range."""
    match = _TIME.search(text)
    if match is None:
        return None
    hour, minute, second = (int(group) for group in match.groups())
    if hour > 12 or minute > 59 or second > 59:
        return None
    return hour % 12, minute, second


def parse_battery(text: str, *, require_percent: bool = False) -> int | None:
    """The first whole number in `text` (with "%"/"percent" when `require_percent`), if 0-100."""
    for match in _NUMBER.finditer(text.lower()):
        if require_percent and match[2] is None:
            continue
        value = int(match[1])
        return value if value <= 100 else None
    return None


def parse_weather(text: str) -> str | None:
    """The first word of WEATHERS in `text` (lower-cased), or None."""
    match = _WEATHER.search(text.lower())
    return match[1] if match else None


def parse_corner(text: str) -> str | None:
    """The first corner named in `text`, as its canonical CORNERS entry, or None."""
    match = _CORNER.search(text.lower())
    return f"{match[1]}-{match[2]}" if match else None


def parse_answer(attribute: str, text: str) -> Value | None:
    """The value a VQA answer gives for `attribute`, by the rules of the module docstring."""
    _check_attribute(attribute)
    text = text.lower()
    if attribute == "time":
        return parse_time(text)
    if attribute == "battery":
        return parse_battery(text)
    if attribute == "weather":
        return parse_weather(text)
    return parse_corner(text)


def _check_attribute(attribute: str) -> None:
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; valid: {', '.join(ATTRIBUTES)}")


# ---------------------------------------------------------------------------
# VQA


def score_value(attribute: str, value: Value | None, face: WatchFace) -> float:
    """The score of a parsed value against the truth: graded for time and battery, exact otherwise."""
    _check_attribute(attribute)
    if value is None:
        return 0.0
    if attribute == "time":
        assert isinstance(value, tuple)
        e_h = _circular_error(value[0], face.hour, 12)
        e_m = _circular_error(value[1], face.minute, 60)
        e_s = _circular_error(value[2], face.second, 60)
        return 1.0 - (e_h / 6 + e_m / 30 + e_s / 30) / 3
    if attribute == "battery":
        assert isinstance(value, int)
        return float(np.clip(1.0 - abs(value - face.battery) / 100, 0.0, 1.0))
    return float(value == getattr(face, attribute))


def _circular_error(a: int, b: int, period: int) -> int:
    """Distance between a and b on a dial of `period` positions: 11 vs 0 on 12 hours is 1."""
    d = (a - b) % period
    return min(d, period - d)


def score_vqa_answer(attribute: str, predicted: str, face: WatchFace) -> float:
    """Score in [0, 1] of one answer to a question about `attribute`; unparsable = 0."""
    return score_value(attribute, parse_answer(attribute, predicted), face)


def score_vqa(items: Iterable[VQAItem]) -> dict[str, float]:
    """Mean score per attribute, plus "overall" = the mean over all questions.

    "overall" weights every question equally (not every attribute), as docs/STUDY.md does.
    Attributes with no question are absent; with no question at all the dict is empty.
    Keys come in ATTRIBUTES order, then "overall".
    """
    scores: dict[str, list[float]] = {}
    for attribute, predicted, face in items:
        scores.setdefault(attribute, []).append(score_vqa_answer(attribute, predicted, face))
    return _summarise(scores)


def _summarise(scores: Mapping[str, list[float]]) -> dict[str, float]:
    result = {a: float(np.mean(scores[a])) for a in ATTRIBUTES if scores.get(a)}
    every = [s for a in result for s in scores[a]]
    if every:
        result["overall"] = float(np.mean(every))
    return result


# ---------------------------------------------------------------------------
# Captions

# Sentences end at . ; ! ? or a newline followed by a space or the end ("42.5" is not split).
_SENTENCE_END = re.compile(r"[.;!?\n]+(?=\s|$)")
_ANCHORS = {  # words that claim a corner named near them
    "weather_corner": re.compile(r"\bweather\b|" + _WEATHER.pattern),
    "battery_corner": re.compile(r"\bbattery\b|(?<![\d:.])\d+\s*(?:%|percent\b)"),
}
_CLAUSE_BREAK = re.compile(r"\b(?:and|but|while|whereas)\b")


def parse_caption(caption: str) -> dict[str, Value]:
    """The attribute values a caption states; attributes it does not state are absent.

    - time, weather: the first one anywhere in the caption (rules of the module docstring).
    - battery: the first number with "%" or "percent" anywhere in the caption.
    - weather_corner / battery_corner: each corner named belongs to the nearest *anchor*
      before it in its clause, or, when none precedes it, to the first anchor after it in
      its clause. Weather anchors are the weather words and "weather"; battery anchors are
      "battery" and percentages. Sentences end at . ; ! ? or a line break; clauses are the
      parts of a sentence between "and", "but", "while", "whereas" (not commas: "It is
      raining, shown in the top-left corner" is one clause). A clause without anchors uses
      its sentence's anchors; a sentence without anchors assigns no corner. The first
      corner belonging to each kind counts.
      "It is raining, shown in the top-left corner." -> weather_corner = top-left;
      "In the top-left corner it is raining, and in the bottom-right corner the battery
      is at 42%." -> weather_corner = top-left, battery_corner = bottom-right.
    """
    text = caption.lower()
    stated: dict[str, Value | None] = {
        "time": parse_time(text),
        "weather": parse_weather(text),
        "battery": parse_battery(text, require_percent=True),
    }
    for sentence in _SENTENCE_END.split(text):
        breaks = [m.start() for m in _CLAUSE_BREAK.finditer(sentence)]
        anchors = sorted(  # (position, clause index, which corner it claims)
            (m.start(), bisect(breaks, m.start()), kind)
            for kind, pattern in _ANCHORS.items()
            for m in pattern.finditer(sentence)
        )
        if not anchors:
            continue
        for match in _CORNER.finditer(sentence):
            clause = bisect(breaks, match.start())
            candidates = [a for a in anchors if a[1] == clause] or anchors
            before = [kind for start, _, kind in candidates if start < match.start()]
            kind = before[-1] if before else candidates[0][2]
            stated.setdefault(kind, f"{match[1]}-{match[2]}")
    return {attribute: value for attribute, value in stated.items() if value is not None}


def score_caption(predicted: str, face: WatchFace, mentioned: Sequence[str]) -> float:
    """Fraction of the `mentioned` attributes that the caption states correctly.

    Each mentioned attribute contributes the VQA score of the value the caption states for
    it (graded for time and battery, exact for weather and corners; 0 when not stated), and
    the result is their mean. Attributes the caption states but that were not mentioned in
    the reference are ignored. `mentioned` must not be empty.
    """
    if not mentioned:
        raise ValueError("score_caption: `mentioned` is empty; a caption always states the time")
    stated = parse_caption(predicted)
    return float(np.mean([score_value(a, stated.get(a), face) for a in mentioned]))


# ---------------------------------------------------------------------------
# Constant-answer baselines


def constant_answers(train_items: Iterable[VQAItem]) -> dict[str, str]:
    """The most frequent training answer string per attribute; ties go to the smallest string."""
    counts: dict[str, Counter[str]] = {}
    for attribute, answer, _face in train_items:
        counts.setdefault(attribute, Counter())[answer] += 1
    return {
        attribute: min(counter, key=lambda answer: (-counter[answer], answer))
        for attribute, counter in counts.items()
    }


def constant_answer_baseline(
    train_items: Iterable[VQAItem], test_items: Iterable[VQAItem]
) -> dict[str, float]:
    """`score_vqa` of answering every test question with `constant_answers(train_items)`.

    Only the attribute and face of each test item are used. An attribute never asked in
    training has no constant answer and scores 0.
    """
    answers = constant_answers(train_items)
    return score_vqa((a, answers.get(a, ""), face) for a, _predicted, face in test_items)


def constant_caption_baseline(
    train_items: Iterable[VQAItem], test_captions: Iterable[tuple[WatchFace, Sequence[str]]]
) -> float:
    """Mean caption score of a caption stating every `constant_answers(train_items)` value.

    `test_captions` holds (face, mentioned) per test caption; it is scored per attribute
    exactly as `score_caption` scores a caption that states those answers.
    """
    answers = constant_answers(train_items)
    per_caption = [
        np.mean([score_vqa_answer(a, answers.get(a, ""), face) for a in mentioned])
        for face, mentioned in test_captions
    ]
    if not per_caption:
        raise ValueError("constant_caption_baseline: no test captions")
    return float(np.mean(per_caption))


# ---------------------------------------------------------------------------
# Generation


def _as_numpy(x: Any) -> np.ndarray:
    """A numpy array from an array-like or a torch tensor (any device, bf16 included)."""
    if hasattr(x, "detach"):  # a torch tensor; duck-typed so this module does not import torch
        x = x.detach().cpu()
        x = x.float() if x.is_floating_point() else x
        return x.numpy()
    return np.asarray(x)


def cosine_to_target(predicted: Any, target: Any, eps: float = 1e-8) -> float:
    """Mean cosine similarity over tokens after centring on the target set's mean.

    predicted, target: (N, T, D) (any leading shape works; D is the last axis). The
    per-dimension mean of `target` over all its tokens is subtracted from both first:
    raw pixel patches share a large common component, so their raw cosine is near 1
    whatever the image (FIELD-NOTES). A token with zero norm after centring scores 0.
    """
    p, t = _as_numpy(predicted).astype(np.float64), _as_numpy(target).astype(np.float64)
    if p.shape != t.shape or p.ndim < 2 or p.size == 0:
        raise ValueError(f"cosine_to_target: shapes {p.shape} and {t.shape}; expected equal (N, T, D)")
    mean = t.reshape(-1, t.shape[-1]).mean(axis=0)  # (D,)
    p, t = p - mean, t - mean
    norms = np.linalg.norm(p, axis=-1) * np.linalg.norm(t, axis=-1)  # (N, T)
    cos = (p * t).sum(axis=-1) / np.maximum(norms, eps)
    return float(cos.mean())


def token_accuracy(predicted_codes: Any, target_codes: Any) -> float:
    """Fraction of positions where the predicted code equals the target code; (N, T) ints."""
    p, t = _as_numpy(predicted_codes), _as_numpy(target_codes)
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"token_accuracy: shapes {p.shape} and {t.shape}; expected equal (N, T)")
    return float((p == t).mean())


ProbeFn = Callable[[Any], Mapping[str, Sequence[str]]]
"""An attribute probe (added with the trainable): image tokens (N, T, ...) of one generation
space -> {attribute: N canonical answer strings, one per image} for the attributes it reads."""


def probe_accuracy(predict_fn: ProbeFn, tokens: Any, faces: Sequence[WatchFace]) -> dict[str, float]:
    """How well a probe reads the attributes back from image tokens, on the VQA scale.

    Each probed (attribute, image) pair is scored with `score_vqa_answer` (graded for time
    and battery, exact otherwise); the dict has the shape of `score_vqa` (per attribute +
    "overall"). Logged as `test/gen/probe/...` on generated tokens and `probe/true/...` on
    the true tokens.
    """
    predictions = predict_fn(tokens)
    items: list[VQAItem] = []
    for attribute, answers in predictions.items():
        if len(answers) != len(faces):
            raise ValueError(f"probe_accuracy: {len(answers)} {attribute} answers for {len(faces)} images")
        items.extend((attribute, answer, face) for answer, face in zip(answers, faces))
    return score_vqa(items)


def frechet_distance(a: Any, b: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2), the formula of FID.

    The matrix square roots come from symmetric eigendecompositions (negative eigenvalues of
    rank-deficient covariances clipped to 0), so the result is real and >= 0 up to rounding.
    """
    a, b = _as_numpy(a).astype(np.float64), _as_numpy(b).astype(np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"frechet_distance: need two (N>=2, D) feature sets of one width, got {a.shape} and {b.shape}")
    mu = a.mean(0) - b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # S_a^1/2
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)  # eigenvalues of S_a^1/2 S_b S_a^1/2
    trace = np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.sqrt(np.clip(cross, 0.0, None)).sum()
    return float(max(mu @ mu + trace, 0.0))
