"""Normalization: one spelling for the same visible text."""

from __future__ import annotations

import unicodedata

from engine.data.documents import Document
from engine.data.normalize import NormalizeConfig, Normalizer

normalize = Normalizer(NormalizeConfig())


def _run(text: str, stage: Normalizer = normalize) -> str:
    doc = Document(text)
    assert stage(doc) is None  # normalization never removes a document
    return doc.text


def test_decomposed_accents_are_composed():
    decomposed = unicodedata.normalize("NFD", "Café naïve")
    assert decomposed != "Café naïve"
    assert _run(decomposed) == "Café naïve"


def test_control_and_zero_width_characters_go():
    assert _run("To\x00 be\u200b or\x1b not\ufeff") == "To be or not"


def test_whitespace_is_collapsed_but_paragraphs_stay():
    text = "  To be,\t\tor  not\u00a0\u00a0to be:   \r\nthat is the question.\n\n\n\n\nWhether 'tis nobler  "
    assert _run(text) == "To be, or not to be:\nthat is the question.\n\nWhether 'tis nobler"
    assert _run("plain ascii  with   runs \nand trailing") == "plain ascii with runs\nand trailing"


def test_settings_switch_steps_off():
    keep = Normalizer(NormalizeConfig(collapse_whitespace=False, strip_control=False))
    assert _run("a  b\x00", keep) == "a  b\x00"


def test_shakespeare_is_changed_only_in_spacing(hamlet_text):
    out = _run(hamlet_text)
    assert out.split() == hamlet_text.replace("\ufeff", "").split()
