"""Tokenizers of the unified VLM: a small word/digit vocabulary, or a pretrained LM's own.

Both expose the same small interface (`TextTokenizer`): `encode(text) -> list[int]`,
`decode(ids) -> str`, `vocab_size`, the ids of the special tokens the sequence
layout uses (`pad`, `bos`, `eos`, `image`, `boi`), the ids that open a user turn and
an assistant turn (`user_prefix`, `assistant_prefix`: one special token each in the
word vocabulary; a pretrained LM's own conversation format in its text), and
`added_ids`, the rows a pretrained vocabulary gained (they train: freezing.py).

The word tokenizer splits numbers digit by digit ("42%" -> "4" "2" "%",
"03:07:59" -> "0" "3" ":" "0" "7" ":" "5" "9") so that every answer of an
attribute has the same token structure; with whole-number tokens the battery
answers collapse onto a few frequent values (FIELD-NOTES).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from trainables.errors import UserError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
IMAGE = "<image>"  # one placeholder per understanding image token (replaced by projected features)
BOI = "<boi>"  # begin-of-image: the generated image tokens follow it
USER, ASSISTANT = "<user>", "<assistant>"
SPECIALS = (PAD, BOS, EOS, UNK, IMAGE, BOI, USER, ASSISTANT)

# A word (letters, inner hyphens/apostrophes: "top-left", "it's"), one digit, or one other symbol.
_PIECE = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*|\d|[^\sA-Za-z\d]")
_NO_SPACE_BEFORE = set("%:,.?!;)'")
_NO_SPACE_AFTER = set("(")


class TextTokenizer(Protocol):
    vocab_size: int
    pad: int
    bos: int
    eos: int
    image: int
    boi: int
    user_prefix: list[int]
    assistant_prefix: list[int]
    added_ids: list[int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, folder: Path) -> None: ...


def split_words(text: str) -> list[str]:
    """'It is 03:07, 42%.' -> ['It', 'is', '0', '3', ':', '0', '7', ',', '4', '2', '%', '.']"""
    return _PIECE.findall(text)


def join_words(pieces: list[str]) -> str:
    """The inverse of split_words for the texts of this study: digits, ':' and '%' glue together."""
    out = ""
    for piece in pieces:
        prev = out[-1:] if out else ""
        glue = (
            not out
            or piece in _NO_SPACE_BEFORE
            or prev in _NO_SPACE_AFTER
            or (piece.isdigit() and (prev.isdigit() or prev == ":"))
        )
        out += piece if glue else " " + piece
    return out


class WordTokenizer:
    """A closed vocabulary of the words, digits and symbols of a dataset's texts."""

    def __init__(self, words: list[str]):
        self.itos = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.vocab_size = len(self.itos)
        self.pad, self.bos, self.eos, self.unk = (self.stoi[t] for t in (PAD, BOS, EOS, UNK))
        self.image, self.boi, self.user, self.assistant = (self.stoi[t] for t in (IMAGE, BOI, USER, ASSISTANT))
        self.user_prefix, self.assistant_prefix, self.added_ids = [self.user], [self.assistant], []
        self._encoded: dict[str, tuple[int, ...]] = {}  # a dataset repeats its texts: split each once

    @classmethod
    def build(cls, texts: Iterable[str]) -> WordTokenizer:
        """Vocabulary = every piece of `texts` plus all ten digits, most frequent first (ties by name)."""
        counts = Counter(piece for text in texts for piece in split_words(text))
        counts.update({str(d): 0 for d in range(10)})
        return cls(sorted(counts, key=lambda w: (-counts[w], w)))

    def encode(self, text: str) -> list[int]:
        ids = self._encoded.get(text)
        if ids is None:
            ids = self._encoded[text] = tuple(self.stoi.get(piece, self.unk) for piece in split_words(text))
        return list(ids)

    def decode(self, ids: Iterable[int]) -> str:
        words = [self.itos[i] for i in ids if 0 <= i < self.vocab_size and self.itos[i] not in SPECIALS]
        return join_words(words)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps(self.itos[len(SPECIALS):]))

    @classmethod
    def load(cls, folder: Path) -> WordTokenizer:
        return cls(json.loads((folder / "vocab.json").read_text()))


# Vicuna v1.1's conversation format (Vicuna-7B v1.5 ships no chat template): "USER: q ASSISTANT: a</s>".
VICUNA_ROLES = ("USER: ", " ASSISTANT:")


class PretrainedTokenizer:
    """A transformers tokenizer from a local folder (tokenizer.json, or a sentencepiece tokenizer.model alone),
    with the placeholder tokens added and turns in the LM's own conversation format: its chat template's role
    markers where it has one, else Vicuna's.

    The LM's embedding matrix must be resized to `vocab_size` (build_model does it).
    """

    def __init__(self, folder: str | Path):
        from transformers import AutoTokenizer

        try:
            self.hf = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except ImportError as error:  # a tokenizer.model alone needs sentencepiece (a dependency of uvlm)
            raise UserError(f"lm.pretrained_path {str(folder)!r}: its tokenizer needs a package that is missing ({error})") from None
        except (OSError, ValueError) as error:
            raise UserError(f"lm.pretrained_path {str(folder)!r}: no loadable tokenizer there ({error})") from None
        original = len(self.hf)
        added = [t for t in (IMAGE, BOI) if t not in self.hf.get_vocab()]
        if added:
            self.hf.add_tokens(added, special_tokens=True)
        if self.hf.pad_token is None:
            self.hf.add_special_tokens({"pad_token": PAD})
        if self.hf.eos_token is None:
            self.hf.add_special_tokens({"eos_token": EOS})
        if self.hf.bos_token is None:
            self.hf.add_special_tokens({"bos_token": BOS})
        self.vocab_size = len(self.hf)
        self.added_ids = list(range(original, self.vocab_size))
        ids = self.hf.convert_tokens_to_ids
        self.pad, self.bos, self.eos = self.hf.pad_token_id, self.hf.bos_token_id, self.hf.eos_token_id
        self.image, self.boi = ids(IMAGE), ids(BOI)
        user, assistant = role_markers(self.hf)
        self.user_prefix, self.assistant_prefix = self.encode(user), self.encode(assistant)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True).strip()

    def save(self, folder: Path) -> None:
        self.hf.save_pretrained(str(folder))


def role_markers(hf) -> tuple[str, str]:
    """The text before a user's message and between it and the assistant's reply, from the tokenizer's chat
    template (rendered around two sentinels), or Vicuna's format when it has none."""
    if not getattr(hf, "chat_template", None):
        return VICUNA_ROLES
    question, answer = "\u2401", "\u2402"  # characters no template writes
    text = hf.apply_chat_template([{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                                  tokenize=False)
    before, rest = text.split(question, 1)
    return before.removeprefix(hf.bos_token or ""), rest.split(answer, 1)[0]
