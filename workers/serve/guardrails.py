"""Guardrails of a replica: the data pipeline's PII and toxicity stages on inputs and outputs.

    guard = Guardrails(spec.guardrails)
    texts, report = guard.check_input(["my mail is ann@example.com"])  # or GuardrailRefused
    texts, report = guard.check_output(["..."])  # redacted; report["toxicity_action"]

The stages are the engine's own (``engine.data.pii.PIIRedactor``,
``engine.data.toxicity.LexiconScorer``), so a deployment refuses or masks what its training
pipeline would have. Decisions:

- **Input PII**: ``redact`` replaces each span by its typed placeholder (``<EMAIL>``) before
  the model sees it; ``refuse`` answers 400 ``guardrail_refused`` naming the types found and
  their counts, never the values (the archive keeps the redacted text either way).
- **Input toxicity** (share of lexicon words above the threshold): ``flag`` answers and
  records status ``flagged``; ``refuse`` answers 400 ``guardrail_refused``.
- **Output PII** (``pii_output=redact``): what the model writes is masked the same way.
- **Output toxicity**: ``flag`` as above; ``refuse`` replaces the choice's text by "" with
  ``finish_reason: "content_filter"`` (OpenAI's behaviour); a stream stops there.
- **Streams**: :class:`StreamRedactor` holds text back until it can no longer become part of
  a PII match (see its docstring), so streamed deltas are redacted exactly as the whole text.

A report (one per direction, as the archive record's ``guardrails``) is
``{"pii": {"EMAIL": 1}, "pii_action": "none|redacted|refused", "toxicity": 0.0,
"toxicity_action": "none|flagged|refused"}``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from engine.data.pii import _WINDOW_MARGIN, PII_TYPES, PIIConfig, PIIRedactor
from engine.data.toxicity import DEFAULT_LEXICON, LexiconScorer, load_lexicon
from workers.serve.protocol import GuardrailConfig

PII_MODES = ("off", "redact", "refuse")
PII_OUTPUT_MODES = ("off", "redact")
TOXICITY_MODES = ("off", "flag", "refuse")

_LEXICON: frozenset[str] | None = None  # loaded once per process


class GuardrailRefused(Exception):
    """The input was refused by a guardrail; the message names what was found, never the data."""

    def __init__(self, message: str, report: dict[str, Any], texts: list[str]):
        super().__init__(message)
        self.report = report
        self.texts = texts  # the input with PII redacted: what the archive may keep


def empty_report() -> dict[str, Any]:
    return {"pii": {}, "pii_action": "none", "toxicity": 0.0, "toxicity_action": "none"}


def _lexicon() -> frozenset[str]:
    global _LEXICON
    if _LEXICON is None:
        _LEXICON = load_lexicon(DEFAULT_LEXICON)
    return _LEXICON


class Guardrails:
    def __init__(self, config: GuardrailConfig):
        for name, value, modes in (
            ("pii", config.pii, PII_MODES),
            ("pii_output", config.pii_output, PII_OUTPUT_MODES),
            ("toxicity", config.toxicity, TOXICITY_MODES),
        ):
            if value not in modes:
                raise ValueError(f"guardrails.{name} must be one of {list(modes)}, got {value!r}")
        self.config = config
        types = list(config.pii_types) or list(PII_TYPES)
        self.redactor = PIIRedactor(PIIConfig(types=types))
        self.scorer = LexiconScorer(_lexicon()) if config.toxicity != "off" else None
        self.threshold = float(config.toxicity_threshold)

    @property
    def redacts_output(self) -> bool:
        return self.config.pii_output == "redact"

    def redact(self, text: str) -> tuple[str, Counter[str]]:
        return self.redactor.redact(text)

    def toxicity(self, text: str) -> float:
        return self.scorer.score(text) if self.scorer is not None else 0.0

    def toxic(self, score: float) -> bool:
        return self.scorer is not None and score > self.threshold  # as ToxicityFilter

    # -- input ------------------------------------------------------------------------
    def check_input(self, texts: list[str]) -> tuple[list[str], dict[str, Any]]:
        """The texts as the model may see them, and the report; GuardrailRefused to refuse."""
        report = empty_report()
        found: Counter[str] = Counter()
        out = list(texts)
        if self.config.pii != "off":
            for i, text in enumerate(texts):
                out[i], counts = self.redact(text)
                found.update(counts)
        report["pii"] = dict(sorted(found.items()))
        if self.scorer is not None:
            report["toxicity"] = round(max((self.toxicity(t) for t in texts), default=0.0), 4)
        if found and self.config.pii == "refuse":
            report["pii_action"] = "refused"
            named = ", ".join(f"{kind} ({count})" for kind, count in sorted(found.items()))
            raise GuardrailRefused(
                f"the input contains personal data ({named}); this deployment refuses it",
                report,
                out,
            )
        if found:
            report["pii_action"] = "redacted"
        if self.toxic(report["toxicity"]):
            if self.config.toxicity == "refuse":
                report["toxicity_action"] = "refused"
                raise GuardrailRefused(
                    f"the input's toxicity score {report['toxicity']} is above this "
                    f"deployment's threshold of {self.threshold}",
                    report,
                    out,
                )
            report["toxicity_action"] = "flagged"
        return out, report

    # -- output -----------------------------------------------------------------------
    def check_output(self, texts: list[str]) -> tuple[list[str], list[bool], dict[str, Any]]:
        """(texts redacted, which choices are refused, report) of a finished answer."""
        report = empty_report()
        found: Counter[str] = Counter()
        out = list(texts)
        if self.redacts_output:
            for i, text in enumerate(texts):
                out[i], counts = self.redact(text)
                found.update(counts)
        report["pii"] = dict(sorted(found.items()))
        if found:
            report["pii_action"] = "redacted"
        refused = [False] * len(out)
        if self.scorer is not None:
            scores = [self.toxicity(t) for t in out]
            report["toxicity"] = round(max(scores, default=0.0), 4)
            for i, score in enumerate(scores):
                if self.toxic(score):
                    if self.config.toxicity == "refuse":
                        refused[i] = True
                        out[i] = ""
                        report["toxicity_action"] = "refused"
                    elif report["toxicity_action"] == "none":
                        report["toxicity_action"] = "flagged"
        return out, refused, report

    def stream_redactor(self) -> StreamRedactor | None:
        return StreamRedactor(self.redactor) if self.redacts_output else None


# A cut is never right after a lone two-letter capital word: a UK national insurance number
# ("AB 12 34 56 C") is the one PII kind whose part before its first space has no digit.
_NINO_HEAD = re.compile(r"(?:^|\W)[A-Z]{2}$")
_DIGIT = re.compile(r"[0-9]")


class StreamRedactor:
    """Redacts a streamed text exactly as :meth:`PIIRedactor.redact` redacts the whole.

    Text is released up to a *safe cut*: a position right after a whitespace character with
    no digit in the ``_WINDOW_MARGIN`` characters before it and not right after a two-letter
    capital word. Every PII kind is either free of whitespace (e-mail, IP address, US SSN)
    or holds a digit before its first space (card, IBAN, phone), except a UK NI number
    (two capitals first), and none is longer than the margin: so no match, present or
    future, can straddle a safe cut, and redacting the pieces between cuts one by one gives
    the same text as redacting the whole. Prose without digits streams word by word.
    """

    def __init__(self, redactor: PIIRedactor):
        self.redactor = redactor
        self.pending = ""  # received, not yet released
        self.found: Counter[str] = Counter()

    def feed(self, text: str) -> str:
        self.pending += text
        cut = self._safe_cut()
        if cut <= 0:
            return ""
        piece, self.pending = self.pending[:cut], self.pending[cut:]
        return self._redact(piece)

    def finish(self) -> str:
        piece, self.pending = self.pending, ""
        return self._redact(piece) if piece else ""

    def _redact(self, piece: str) -> str:
        text, counts = self.redactor.redact(piece)
        self.found.update(counts)
        return text

    def _safe_cut(self) -> int:
        text = self.pending
        for position in range(len(text), 0, -1):
            if not text[position - 1].isspace():
                continue
            head = text[: position - 1]
            window = text[max(0, position - _WINDOW_MARGIN) : position]
            if _DIGIT.search(window) or _NINO_HEAD.search(head):
                # A digit near this cut is near every earlier cut within the margin too;
                # keep looking further back only past the margin.
                continue
            return position
        return 0
