"""Train and load tokenizers, all stored as one Hugging Face ``tokenizer.json``.

Two kinds, both built from ``tokenizers`` stages so the file loads with ``Tokenizer.from_file`` and
``transformers.PreTrainedTokenizerFast``:

- ``bpe``: byte-level BPE (GPT-2 style). Any Unicode text round-trips exactly, because every byte has
  a token and the decoder turns byte tokens back into the original UTF-8.
- ``char``: one token per character seen in training (``<|unk|>`` for characters never seen), as in
  nanoGPT's ``shakespeare_char``.

Both reserve ``<|endoftext|>``, which separates documents in the shards.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from aigc.config import TokenizerConfig
from aigc.errors import DataError

EOT = "<|endoftext|>"
TARGET_TOKENIZER = "target_tokenizer.json"  # the second tokenizer of pairs prepared with tokenizer.separate
UNK = "<|unk|>"


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE with ``vocab_size`` entries (256 byte tokens + merges + ``<|endoftext|>``)."""
    if vocab_size < 257:
        raise DataError(f"tokenizer.vocab_size={vocab_size} is too small for byte-level BPE; use at least 257")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def train_char(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """A character vocabulary: the ``vocab_size - 2`` most frequent characters, in code-point order."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    chars = sorted(c for c, _ in counts.most_common(max(vocab_size - 2, 0)))
    vocab = {EOT: 0, UNK: 1} | {c: i + 2 for i, c in enumerate(chars)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([EOT, UNK])
    return tokenizer


def _capped(texts: Iterable[str], max_chars: float) -> Iterator[str]:
    """``texts`` until about ``max_chars`` characters have been given."""
    total = 0
    for text in texts:
        yield text
        total += len(text)
        if total >= max_chars:
            return


def tokenizer_for(settings: TokenizerConfig, texts: Iterable[str]) -> Tokenizer | None:
    """The tokenizer ``tokenizer.path`` names, or one trained on at most ``train_max_mb`` of ``texts``.

    None when a tokenizer is to be trained and ``texts`` is empty (the caller says why the data is empty).
    """
    if settings.path is not None:
        return load_tokenizer(settings.path)
    texts = _capped(texts, settings.train_max_mb * 1e6)
    first = next(texts, None)
    if first is None:
        return None
    texts = itertools.chain([first], texts)
    if settings.kind == "bpe":
        return train_bpe(texts, settings.vocab_size)
    return train_char(texts, settings.vocab_size)


def load_tokenizer(path: Path) -> Tokenizer:
    """Load a ``tokenizer.json``; a clear error if it is missing or not one."""
    if not path.is_file():
        raise DataError(f"no tokenizer at {path}; run `aigc prepare` first or set tokenizer.path to a tokenizer.json")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # tokenizers raises bare Exception subclasses for malformed files
        raise DataError(f"{path} is not a valid tokenizer.json ({err}); re-run `aigc prepare` to rebuild it") from None


def eot_id(tokenizer: Tokenizer, eos_ids: Sequence[int] = ()) -> int:
    """Id of the token that ends a document: ``<|endoftext|>`` (every tokenizer aigc trains has it), else the
    model's first eos id (``eos_ids``: an imported model's ``model.eos_token_ids``, e.g. Llama's ``</s>``)."""
    token_id = tokenizer.token_to_id(EOT)
    if token_id is None and eos_ids:
        return eos_ids[0]
    if token_id is None:
        raise DataError(f"the tokenizer has no {EOT} token and the model no eos id; aigc needs one to separate "
                        "documents (set model.eos_token_ids=[ID])")
    return token_id

