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
from collections.abc import Callable
from typing import Any

from engine.data.pii import PII_TYPES, PIIConfig, PIIRedactor
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


# Placeholders tried in order: the pipeline's typed one, then forms a narrower tokenizer
# can still encode (a character vocabulary trained on text with no "<" in it), then none.
PLACEHOLDERS = ("<{type}>", "[{type}]", "{type}", "")


def placeholder_for(types: list[str], encodable: Callable[[str], bool] | None) -> str:
    """The first placeholder whose every rendering the model's tokenizer can encode: a
    redacted prompt must never be refused for the redaction's own characters."""
    for placeholder in PLACEHOLDERS:
        if encodable is None or all(encodable(placeholder.format(type=t)) for t in types):
            return placeholder
    return ""


class Guardrails:
    def __init__(self, config: GuardrailConfig, encodable: Callable[[str], bool] | None = None):
        for name, value, modes in (
            ("pii", config.pii, PII_MODES),
            ("pii_output", config.pii_output, PII_OUTPUT_MODES),
            ("toxicity", config.toxicity, TOXICITY_MODES),
        ):
            if value not in modes:
                raise ValueError(f"guardrails.{name} must be one of {list(modes)}, got {value!r}")
        self.config = config
        types = list(config.pii_types) or list(PII_TYPES)
        self.placeholder = placeholder_for(types, encodable)
        self.redactor = PIIRedactor(PIIConfig(types=types, placeholder=self.placeholder))
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


# The separators inside a PII match are single spaces (or dots and dashes) between groups
# that end in a digit, a capital (IBAN groups, the letters of a UK NI number) or ")" (a
# phone's area code): a space after any other character cannot be inside a match.
_GROUP_END = re.compile(r"[0-9A-Z)]")


class StreamRedactor:
    """Redacts a streamed text exactly as :meth:`PIIRedactor.redact` redacts the whole.

    Text is released up to a *safe cut*: right after a whitespace character that no match
    can contain. Every PII pattern (engine/data/pii.py) is either free of whitespace
    (e-mail, IP addresses, US SSN) or has single-space separators between groups that end
    in a digit, a capital letter or ")" (cards, IBANs, phones, UK NI numbers). So a space
    after any other character (a lower-case word, punctuation), or a newline, is never
    inside a match, present or future; redacting the pieces between such cuts one by one
    gives the same text as redacting the whole (lookarounds at a cut see the whitespace
    or nothing, which they treat alike). Prose streams word by word; a number, or a word
    ending in a capital, waits for the next safe space.
    """

    def __init__(self, redactor: PIIRedactor):
        self.redactor = redactor
        self.pending = ""  # received, not yet released
        self.before = ""  # the last character released (what precedes `pending`)
        self.found: Counter[str] = Counter()

    def feed(self, text: str) -> str:
        self.pending += text
        cut = self._safe_cut()
        if cut <= 0:
            return ""
        piece, self.pending = self.pending[:cut], self.pending[cut:]
        self.before = piece[-1]
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
            char = text[position - 1]
            if not char.isspace():
                continue
            previous = text[position - 2] if position >= 2 else self.before
            if char == " " and (not previous or _GROUP_END.match(previous)):
                continue
            return position
        return 0
