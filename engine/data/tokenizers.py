"""Tokenizers with one small interface: byte-level BPE (Hugging Face ``tokenizers``) and characters.

Both kinds offer::

    encode(text) -> list[int]            encode_batch(texts) -> list[list[int]]
    decode(ids) -> str                   vocab_size, eot_id (end-of-text id)
    save(path)                           load_tokenizer(path)  # recognises either kind

Special tokens come first in the vocabulary and the **first special token is end-of-text**
(``<|endoftext|>`` by default); special tokens written literally in the text encode to
their ids, so chat transcripts with ``<|user|>`` etc. tokenize as intended.

    tok = BPETokenizer.train(shakespeare_lines, vocab_size=4096)
    tok.save("var/tok.json"); tok = load_tokenizer("var/tok.json")

    char = CharTokenizer.train(open("input.txt").read())   # nanoGPT-style, ~66 symbols

``CharTokenizer`` is for small experiments: it refuses characters it has not seen
(``ValueError`` naming the character) rather than silently dropping them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

END_OF_TEXT = "<|endoftext|>"
# End-of-text first (it is the document separator in packed shards); chat roles for
# fine-tuning; a pad token so batches of unequal length need no reuse of another id.
DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = (
    END_OF_TEXT,
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|pad|>",
)
CHAR_FORMAT = "engine.char-tokenizer/1"


@runtime_checkable
class TextTokenizer(Protocol):
    """What the pipeline and the trainers rely on; both tokenizer kinds satisfy it."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def eot_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, path: str | Path) -> Path: ...


def _with_eot_first(special_tokens: Sequence[str], eot_token: str) -> list[str]:
    ordered = [eot_token] + [t for t in special_tokens if t != eot_token]
    if len(set(ordered)) != len(ordered):
        raise ValueError(f"special tokens must be distinct, got {list(special_tokens)}")
    return ordered


def _texts(texts_or_iterator: str | Iterable[str]) -> Iterator[str]:
    if isinstance(texts_or_iterator, str):
        yield texts_or_iterator
    else:
        yield from texts_or_iterator


class CharTokenizer:
    """One id per character seen in training; special tokens take the first ids."""

    kind = "char"

    def __init__(self, chars: Sequence[str], special_tokens: Sequence[str] = (END_OF_TEXT,)):
        if not special_tokens:
            raise ValueError("a tokenizer needs at least the end-of-text special token")
        self.special_tokens = list(special_tokens)
        self.chars = list(chars)
        self._itos = self.special_tokens + self.chars
        self._stoi = {s: i for i, s in enumerate(self._itos)}
        if len(self._stoi) != len(self._itos):
            raise ValueError("characters and special tokens must be distinct")
        # Code point -> id lookup table: encoding a whole text is then one numpy gather.
        top = max((ord(c) for c in self.chars), default=0)
        self._table = np.full(top + 1, -1, dtype=np.int64)
        for offset, char in enumerate(self.chars):
            self._table[ord(char)] = len(self.special_tokens) + offset
        self._special_ids = {s: i for i, s in enumerate(self.special_tokens)}
        self._special_re = re.compile("(" + "|".join(map(re.escape, self.special_tokens)) + ")")

    @classmethod
    def train(
        cls,
        texts_or_iterator: str | Iterable[str],
        special_tokens: Sequence[str] = (END_OF_TEXT,),
        eot_token: str = END_OF_TEXT,
    ) -> CharTokenizer:
        """Vocabulary = every distinct character of the texts, sorted by code point."""
        seen: set[str] = set()
        for text in _texts(texts_or_iterator):
            seen.update(text)
        return cls(sorted(seen), _with_eot_first(special_tokens, eot_token))

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    @property
    def eot_id(self) -> int:
        return 0

    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        in_table = points < len(self._table)
        ids = np.where(in_table, self._table[np.where(in_table, points, 0)], -1)
        if (ids < 0).any():
            bad = text[int(np.argmax(ids < 0))]
            raise ValueError(
                f"character {bad!r} (U+{ord(bad):04X}) is not in this character tokenizer's "
                f"vocabulary of {len(self.chars)} characters; train it on text that contains it"
            )
        return ids.tolist()

    def encode(self, text: str) -> list[int]:
        if "<|" not in text:  # fast path: no special token can occur
            return self._encode_plain(text)
        ids: list[int] = []
        for piece in self._special_re.split(text):
            if piece in self._special_ids:
                ids.append(self._special_ids[piece])
            elif piece:
                ids.extend(self._encode_plain(piece))
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        itos = self._itos
        return "".join(itos[i] for i in ids)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": CHAR_FORMAT,
            "special_tokens": self.special_tokens,
            "chars": self.chars,
        }
        path.write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
        return path


class BPETokenizer:
    """Byte-level BPE from Hugging Face ``tokenizers``: any text encodes, nothing is unknown."""

    kind = "bpe"

    def __init__(self, tokenizer, eot_token: str = END_OF_TEXT):
        from tokenizers import Tokenizer

        if not isinstance(tokenizer, Tokenizer):
            raise TypeError("BPETokenizer wraps a tokenizers.Tokenizer")
        eot_id = tokenizer.token_to_id(eot_token)
        if eot_id is None:
            raise ValueError(f"the tokenizer has no end-of-text token {eot_token!r}")
        self.tokenizer = tokenizer
        self.eot_token = eot_token
        self._eot_id = eot_id

    @classmethod
    def train(
        cls,
        texts_or_iterator: str | Iterable[str],
        vocab_size: int = 8192,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        eot_token: str = END_OF_TEXT,
        min_frequency: int = 2,
        show_progress: bool = False,
    ) -> BPETokenizer:
        """Train on an iterator of texts (streamed; documents can be any length)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        specials = _with_eot_first(special_tokens, eot_token)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + len(specials):
            raise ValueError(
                f"vocab_size {vocab_size} is too small: byte-level BPE needs at least "
                f"{len(alphabet) + len(specials)} (256 bytes + {len(specials)} special tokens)"
            )
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=alphabet,  # every byte is a token: no text is ever unknown
            show_progress=show_progress,
        )
        tokenizer.train_from_iterator(_texts(texts_or_iterator), trainer=trainer)
        return cls(tokenizer, eot_token)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int:
        return self._eot_id

    @property
    def special_tokens(self) -> list[str]:
        added = self.tokenizer.get_added_tokens_decoder()
        return [added[i].content for i in sorted(added) if added[i].special]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # The "fast" variant skips character offsets, which we never use.
        encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(path))
        return path


def load_tokenizer(path: str | Path) -> CharTokenizer | BPETokenizer:
    """Load a tokenizer saved by either kind (a JSON file, or a folder with tokenizer.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no tokenizer file at {path}; train one with `python -m engine data train-tokenizer`"
        )
    text = path.read_text(encoding="utf-8")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not a tokenizer file (invalid JSON: {error})") from None
    if payload.get("format") == CHAR_FORMAT:
        return CharTokenizer(payload["chars"], payload["special_tokens"])
    if isinstance(payload.get("model"), dict) and payload["model"].get("type") == "BPE":
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_str(text)
        # Our convention: the first special token is end-of-text.
        added = sorted(payload.get("added_tokens", []), key=lambda t: t["id"])
        specials = [t["content"] for t in added if t.get("special")]
        return BPETokenizer(tokenizer, specials[0] if specials else END_OF_TEXT)
    raise ValueError(f"{path} is neither a character tokenizer nor a byte-level BPE tokenizer file")
