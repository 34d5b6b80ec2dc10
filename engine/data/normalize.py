"""Text normalization: Unicode NFC, control characters, whitespace.

Runs first so that every later stage (filters, hashes, MinHash) sees one spelling of
the same text: two documents that differ only in composed vs decomposed accents or
trailing spaces hash the same in exact dedup.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from engine.data.documents import Document

# C0 and C1 control characters except tab and newline (carriage returns are folded into
# newlines before this runs), plus zero-width and BOM characters that survive copy-paste.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_HORIZONTAL_RUN = re.compile(
    r"[ \t\u00a0\u2000-\u200a\u202f\u205f\u3000]{2,}|[\t\u00a0\u2000-\u200a\u202f\u205f\u3000]"
)
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_EXOTIC_SPACE = re.compile("[\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_SPACE_RUN = re.compile(" {2,}")
_ASCII_TRAILING_SPACE = re.compile(" +\n")


def _collapse_whitespace(text: str) -> str:
    """Runs of horizontal space -> one space; no space before a newline.

    Most text is ASCII with single spaces: substring tests (memchr speed) skip the regex
    scans there, which keeps this stage at tens of MB/s.
    """
    if not text.isascii() and _EXOTIC_SPACE.search(text):
        return _TRAILING_SPACE.sub("\n", _HORIZONTAL_RUN.sub(" ", text))
    if "\t" in text:
        text = text.replace("\t", " ")
    if "  " in text:
        text = _SPACE_RUN.sub(" ", text)
    if " \n" in text:
        text = _ASCII_TRAILING_SPACE.sub("\n", text)
    return text


@dataclass
class NormalizeConfig:
    nfc: bool = True  # one code point sequence per visible string (composed accents)
    strip_control: bool = True  # control characters break tokenizers and displays
    collapse_whitespace: bool = True  # runs of spaces/tabs -> one space, trailing spaces dropped
    max_blank_lines: int = 1  # paragraph breaks stay (repetition filters use them), runs shrink


class Normalizer:
    name = "normalize"

    def __init__(self, config: NormalizeConfig):
        self.config = config
        if config.max_blank_lines < 0:
            raise ValueError("max_blank_lines must be 0 or more")
        self._blank_lines = "\n" * (config.max_blank_lines + 1)
        self._many_blank_lines = re.compile("\n{" + str(config.max_blank_lines + 2) + ",}")

    def __call__(self, doc: Document) -> str | None:
        """Rewrite the text in place; never removes a document (returns no reason)."""
        text = doc.text
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self.config.nfc and not text.isascii() and not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        if self.config.strip_control:
            text = _CONTROL.sub("", text)
        if self.config.collapse_whitespace:
            text = _collapse_whitespace(text)
            text = self._many_blank_lines.sub(self._blank_lines, text)
            text = text.strip()
        doc.set_text(text)
        return None
