"""A ``tokenizer.json`` as llama.cpp's ``tokenizer.ggml.*`` metadata, and back.

llama.cpp does not read ``tokenizer.json``: it re-implements a few known byte-level BPE pipelines, picked
by the ``tokenizer.ggml.pre`` name, over a token list and merges. So a tokenizer exports only when its
pipeline is one of those, recognised here by its structure (not by a hash of its output, as llama.cpp's
converter does, which only knows published vocabularies): GPT-2's byte-level regex (what ``aigc prepare``
trains), Llama 3's and Qwen2's split regexes, SmolLM's digits. Anything else (aigc's char tokenizer,
SentencePiece-style vocabularies, a normalizer llama.cpp would not apply) is refused with what to do,
never written as a file that loads and then tokenizes differently.

Import rebuilds the same ``tokenizers`` pipeline from the name, so an exported run imports with the
tokenizer it had.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from aigc.errors import CheckpointError

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {"llama-bpe": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT}
PRE_TOKENIZERS = ("gpt-2", "llama-bpe", "qwen2", "smollm")  # the tokenizer.ggml.pre names aigc writes and reads

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # llama.cpp's token types (gguf.TokenType)


@dataclass
class Vocab:
    """What llama.cpp's byte-level BPE needs: tokens by id, their types, merges, the pre-tokenizer's name."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str


def _byte_level(part: dict[str, Any], use_regex: bool) -> bool:
    return (part.get("type") == "ByteLevel" and not part.get("add_prefix_space", False)
            and part.get("use_regex", True) == use_regex)


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp's name for a ``tokenizer.json`` pre-tokenizer, or None when llama.cpp has no match."""
    if pre is None:
        return None
    if _byte_level(pre, use_regex=True):
        return "gpt-2"
    parts = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if len(parts) != 2:
        return None
    first, second = parts
    if first.get("type") == "Digits" and first.get("individual_digits") and _byte_level(second, use_regex=True):
        return "smollm"
    if (first.get("type") == "Split" and first.get("behavior") == "Isolated" and not first.get("invert")
            and _byte_level(second, use_regex=False)):
        pattern = first.get("pattern", {}).get("Regex")
        return next((name for name, split in _SPLITS.items() if split == pattern), None)
    return None


def vocab_of(tokenizer: Tokenizer, vocab_size: int) -> Vocab:
    """The tokenizer's vocabulary as llama.cpp reads it, padded to the model's ``vocab_size`` with unused ids.

    Raises :class:`CheckpointError` when llama.cpp would tokenize differently (see the module docstring).
    """
    spec = json.loads(tokenizer.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or not isinstance(spec.get("decoder"), dict) \
            or spec["decoder"].get("type") != "ByteLevel":
        raise CheckpointError(
            f"the run's tokenizer ({model.get('type')}, not byte-level BPE) has no llama.cpp equivalent, so a GGUF "
            "file would tokenize differently there; train the run with tokenizer.kind=bpe (aigc's byte-level BPE) "
            "to hand it to llama.cpp, or export a Hugging Face folder (aigc export RUN OUT) instead")
    pre = pre_tokenizer_name(spec.get("pre_tokenizer"))
    if pre is None:
        raise CheckpointError(
            f"the tokenizer's pre-tokenizer ({json.dumps(spec.get('pre_tokenizer'))[:200]}) is none of those llama.cpp "
            f"implements that aigc recognises ({', '.join(PRE_TOKENIZERS)}); export a Hugging Face folder instead")
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise CheckpointError(f"the tokenizer normalizes text ({normalizer.get('type')}), which llama.cpp does not do; "
                              "export a Hugging Face folder instead")
    by_id = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    if by_id and max(by_id) >= vocab_size:
        raise CheckpointError(f"the tokenizer has id {max(by_id)}, beyond the model's vocab_size {vocab_size}")
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL if i not in added else CONTROL if added[i].get("special") else USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return Vocab(tokens, types, merges, pre)


def tokenizer_from(vocab: Vocab) -> Tokenizer:
    """A ``tokenizers`` byte-level BPE equal to the pipeline ``vocab.pre`` names (the inverse of :func:`vocab_of`)."""
    if vocab.pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"the GGUF file's pre-tokenizer '{vocab.pre}' is not one aigc implements "
                              f"({', '.join(PRE_TOKENIZERS)}); its text would be tokenized differently here")
    # added tokens sit in the BPE vocabulary too (as the trainer puts them), so they keep their ids when added
    ids = {token: i for i, (token, kind) in enumerate(zip(vocab.tokens, vocab.types)) if kind != UNUSED}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    tokenizer = Tokenizer(models.BPE(ids, merges, ignore_merges=vocab.pre == "llama-bpe"))
    if vocab.pre == "gpt-2":
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif vocab.pre == "smollm":
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(_SPLITS[vocab.pre]), behavior="isolated"),
             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    special = [(i, t, kind) for i, (t, kind) in enumerate(zip(vocab.tokens, vocab.types)) if kind in (CONTROL, USER_DEFINED)]
    tokenizer.add_tokens([AddedToken(t, special=kind == CONTROL, normalized=False) for _, t, kind in special])
    placed = {t: tokenizer.token_to_id(t) for _, t, _ in special}
    moved = [(t, i, placed[t]) for i, t, _ in special if placed[t] != i]
    if moved:
        token, want, got = moved[0]
        raise CheckpointError(f"the GGUF vocabulary's added token {token!r} has id {want} but follows the regular "
                              f"tokens at {got}; aigc cannot rebuild this vocabulary")
    return tokenizer
