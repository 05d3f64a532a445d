"""Writing token sequences that carry a loss mask: what conversations (SFT) and preference pairs (DPO, ORPO) share.

A run of either kind fine-tunes ``model.init`` with its tokenizer and chat template. Per split it stores token ids,
a uint8 loss mask (``<split>.mask``) and each sequence's length (``<split>.lengths``, uint32), and the held-out
conversations' messages go to ``val_conversations.jsonl`` for the evaluation's sample answers. Rows that cannot be
used are counted in the cleaning report by reason; a sequence longer than the training length (``train.seq_len``)
is counted as ``too_long``, never cut.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from aigc.chat_template import ChatTemplate
from aigc.config import Config
from aigc.data.clean import CleaningReport
from aigc.data.prepare import PrepareResult, data_folder, empty_corpus_error, finish_shards, shard_writers, write_manifest
from aigc.data.shards import token_dtype
from aigc.data.sources import SourceFile, resolve_sources
from aigc.data.split import assign_split
from aigc.errors import DataError
from aigc.tokenizer import eot_id, load_tokenizer

SPLITS = ("train", "val")
HELD_OUT = "val_conversations.jsonl"  # the val split's messages, for the evaluation's sample answers


class MaskedSequences:
    """The shards of one prepare of a ``kind`` of run: :meth:`add` each row's sequences, :meth:`close`, then
    :meth:`write_manifest`."""

    def __init__(self, config: Config, kind: str):
        if config.tokenizer.path is None:
            raise DataError(f"{kind} runs fine-tune an existing model with its tokenizer and chat template: set "
                            "model.init=RUN_OR_HF_DIR (an aigc run, or a Hugging Face model folder)")
        self.config = config
        self.sources: list[SourceFile] = resolve_sources(config.data)
        self.data_dir = data_folder(config)
        self.tokenizer = load_tokenizer(config.tokenizer.path)
        self.template = ChatTemplate.from_checkpoint(config.run_dir)
        self.vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        self.eot = eot_id(self.tokenizer, config.model.eos_token_ids)
        self.writers = (shard_writers(self.data_dir, list(SPLITS), token_dtype(self.vocab))
                        | shard_writers(self.data_dir, [f"{s}.mask" for s in SPLITS], np.dtype(np.uint8))
                        | shard_writers(self.data_dir, [f"{s}.lengths" for s in SPLITS], np.dtype(np.uint32)))
        self.fraction = 0.0 if config.data.val_paths else config.data.val_fraction
        self.report = CleaningReport()
        self._held_out = self.data_dir / f".{HELD_OUT}.tmp"
        self._handle = self._held_out.open("w", encoding="utf-8")

    def add(self, sequences: list[tuple[np.ndarray, np.ndarray]], source: str, key: str, split: str | None,
            size: int, messages: list[dict[str, str]] | None = None) -> str | None:
        """Store one row's ``(ids, mask)`` sequences together in its split (``split``, or by ``key``'s hash), unless
        one is longer than the training length; ``messages`` of a held-out row go to the evaluation's file. Returns
        the split, or None when the row was counted as too long."""
        longest = max(len(ids) for ids, _ in sequences)
        if longest > self.config.seq_len:
            self.report.drop("too_long", source, size,
                             f"{longest} tokens, the training length is {self.config.seq_len} (train.seq_len)")
            return None
        split = split or assign_split(key, self.config.seed, self.fraction)
        for ids, mask in sequences:
            self.writers[split].write(ids, 1, len(ids))
            self.writers[f"{split}.mask"].write(mask, 1, len(mask))
            self.writers[f"{split}.lengths"].write(np.asarray([len(ids)]), 1, 1)
        if split == "val" and messages is not None:
            self._handle.write(json.dumps({"messages": messages, "source": source}, ensure_ascii=False) + "\n")
        self.report.keep(size)
        return split

    def close(self, fields: str) -> None:
        """Close the shards; a clear error naming the rows' ``fields`` when no row was usable."""
        self._handle.close()
        self._held_out.replace(self.data_dir / HELD_OUT)
        self.splits = finish_shards(self.writers, self.data_dir)
        for split in SPLITS:  # the loss mask and the lengths describe their split's tokens
            self.splits[f"{split}.mask"]["of"] = self.splits[f"{split}.lengths"]["of"] = split
        if self.report.kept == 0:
            for info in self.splits.values():
                (self.data_dir / info["file"]).unlink()
            raise empty_corpus_error(self.report, len(self.sources), fields)

    def mask(self, split: str) -> np.ndarray:
        """The stored loss mask of ``split`` (once closed)."""
        info = self.splits[f"{split}.mask"]
        return np.fromfile(self.data_dir / info["file"], dtype=np.uint8) if info["tokens"] else np.zeros(0, np.uint8)

    def write_manifest(self, settings: dict[str, Any], **sections: Any) -> PrepareResult:
        """The manifest of the closed shards, with the kind's own ``sections``."""
        return write_manifest(self.config, self.tokenizer, self.vocab, self.splits, self.sources, self.report,
                              settings, **sections)
