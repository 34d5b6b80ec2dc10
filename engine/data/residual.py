"""What is left after cleaning: toxicity and PII measured on the records that survive.

The stage counters in the report say what the pipeline removed; a compliance policy needs
the other half, what remains ("toxic share and PII after cleaning under thresholds").
``ResidualMeter.measure`` runs on every record that survived the per-record stages, in the
worker, before the global dedup: a duplicate removed later is still counted once per copy,
which errs on the side of reporting more, never less.

- Toxicity: every surviving record is scored with the toxicity stage's own filter when the
  pipeline has one (same lexicon, same threshold, and its score is cached on the document,
  so this costs nothing unless a later stage rewrote the text), else with the default
  lexicon and ``ToxicityConfig().threshold``. A record counts as toxic by the rule the stage
  removes by (score above the threshold), so after a toxicity stage the share is 0.
- PII: a detector with every PII type (regions and leniency of the pii stage, if any) runs
  on a sample of 1 in ``PII_SAMPLE_EVERY`` survivors of each work unit, chosen by their
  position in the unit, plus the first ``PII_SAMPLE_FIRST`` so a tiny dataset is covered.
  Work units do not depend on the number of processes, so neither does the sample. The
  pii stage's placeholders are not PII: a custom one (which might contain an ``@``) is put
  back into the default ``<TYPE>`` form, which no rule matches, before detection.
"""

from __future__ import annotations

from engine.data.config import PipelineConfig
from engine.data.documents import Document
from engine.data.pii import PII_TYPES, PIIConfig, PIIRedactor
from engine.data.report import ResidualStats
from engine.data.toxicity import ToxicityConfig, ToxicityFilter

# 1 in 8 keeps the detector's cost near 1/8 of a pii stage's: a few % of a run's time.
_PII_SAMPLE_BITS = 3
PII_SAMPLE_EVERY = 2**_PII_SAMPLE_BITS
PII_SAMPLE_FIRST = 4
_GOLDEN_32 = 0x9E3779B1  # 2**32 / golden ratio
_DEFAULT_PLACEHOLDER = PIIConfig().placeholder


def residual_toxicity_config(config: PipelineConfig) -> ToxicityConfig:
    """The toxicity stage's settings when the pipeline has one, else the defaults."""
    stage = config.stage("toxicity")
    return stage.params if stage else ToxicityConfig()


class ResidualMeter:
    """Per-process state, built once beside the stages (``toxicity``: the stage's filter)."""

    def __init__(self, config: PipelineConfig, toxicity: ToxicityFilter | None = None):
        self.toxicity = toxicity or ToxicityFilter(residual_toxicity_config(config))
        stage = config.stage("pii")
        written = stage.params if stage else PIIConfig()
        self.detector = PIIRedactor(
            PIIConfig(
                types=list(PII_TYPES),
                regions=list(written.regions),
                phone_leniency=written.phone_leniency,
            )
        )
        self._placeholders = {}  # the pii stage's placeholder -> the default one
        if written.placeholder != _DEFAULT_PLACEHOLDER:
            rendered = {t: written.placeholder.format(type=t) for t in PII_TYPES}
            self._placeholders = {
                text: _DEFAULT_PLACEHOLDER.format(type=t) for t, text in rendered.items() if text
            }

    def measure(self, doc: Document, survivor_index: int, stats: ResidualStats) -> None:
        """Count ``doc``, the unit's ``survivor_index``-th surviving record, into ``stats``."""
        stats.records_checked += 1
        if self.toxicity.is_toxic(doc):
            stats.toxic_records += 1
        if not self._sampled(survivor_index):
            return
        text = doc.text
        for written, default in self._placeholders.items():
            text = text.replace(written, default)
        _, found = self.detector.redact(text)
        stats.pii_sampled_records += 1
        stats.pii_found.update(found)

    @staticmethod
    def _sampled(survivor_index: int) -> bool:
        if survivor_index < PII_SAMPLE_FIRST:
            return True
        # Fibonacci hashing (Knuth, TAOCP 6.4): the top bits of index * 2**32/phi pick 1 in 8
        # at gaps of 5, 8 or 13 with no period, so a pattern that repeats every few records
        # cannot line up with the sample. Not a hash of the text: copies of one record (dedup
        # comes later) would all be in or all out.
        return (survivor_index * _GOLDEN_32 & 0xFFFFFFFF) >> (32 - _PII_SAMPLE_BITS) == 0
