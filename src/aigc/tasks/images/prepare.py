"""The prepare stage for captioned images: split, palette, caption tokenizer, and shards.

The shards have the layout of source/target pairs (``{split}.src.bin`` captions, ``{split}.tgt.bin``
pixels, each sequence followed by ``<|endoftext|>``). Captions and pixels share one vocabulary: the
caption tokenizer's ids come first, then one id per palette colour (``pixel_offset + colour``). The
manifest's ``image`` section holds the side, the palette, the offset and ``prefix``, the longest
caption in tokens (with its end token): the model reads every caption left-padded to that length.

Splits: ``heldout`` for scenes forced out of training (shapes' held-out combinations); the rest by a
keyed hash of each image's identity into train / val / test.
"""

from __future__ import annotations

import numpy as np

from aigc.config import Config
from aigc.data.clean import CleaningReport
from aigc.data.prepare import PrepareResult, data_folder, finish_shards, shard_writers, write_manifest
from aigc.data.shards import token_dtype
from aigc.data.sources import resolve_sources
from aigc.data.split import assign_split
from aigc.errors import DataError
from aigc.tasks.images.pixels import grey_palette, kmeans_palette, quantise
from aigc.tasks.images.sources import image_records, no_caption_help
from aigc.tokenizer import eot_id, tokenizer_for

IMAGE_SPLITS = ("train", "val", "test", "heldout")


def prepare_images(config: Config) -> PrepareResult:
    """Captioned images of ``config.data`` -> palette, tokenizer and shards in ``<run>/data``."""
    data = config.data
    data_dir = data_folder(config)
    sources = resolve_sources(data) if data.paths else []
    report = CleaningReport()
    records = list(image_records(sources, data, report))
    if not records:
        raise DataError(f"no usable images in data.paths / data.builtin.\n{report.table()}{no_caption_help(report)}")
    splits = [r.split or assign_split(r.key, config.seed, data.val_fraction, data.test_fraction) for r in records]
    train_images = np.stack([r.image for r, s in zip(records, splits) if s == "train"] or [records[0].image])
    palette = grey_palette(data.colors) if data.palette == "grey" else kmeans_palette(train_images, data.colors, config.seed)

    captions = [r.caption for r in records]
    tokenizer = tokenizer_for(config.tokenizer, captions)
    eot = eot_id(tokenizer)
    offset = tokenizer.get_vocab_size(with_added_tokens=True)
    vocab = offset + len(palette)
    writers = shard_writers(data_dir, [f"{split}.{side}" for split in IMAGE_SPLITS for side in ("src", "tgt")],
                            token_dtype(vocab))
    encoded = tokenizer.encode_batch(captions, add_special_tokens=False)
    for record, split, encoding in zip(records, splits, encoded):
        src = np.array([*encoding.ids, eot])
        tgt = np.append(quantise(record.image, palette) + offset, eot)
        writers[f"{split}.src"].write(src, 1, len(src))
        writers[f"{split}.tgt"].write(tgt, 1, len(tgt))
    shard_info = finish_shards(writers, data_dir)
    if not shard_info["train.src"]["documents"]:
        raise DataError("every image landed outside the train split; lower data.val_fraction / data.test_fraction")
    labels = {split: [r.label for r, s in zip(records, splits) if s == split] for split in IMAGE_SPLITS}
    image = {"size": data.image_size, "palette": palette.tolist(), "pixel_offset": offset, "vocab_size": vocab,
             "prefix": max(len(e.ids) for e in encoded) + 1, "builtin": list(data.builtin),
             "labels": labels if any(r.label is not None for r in records) else None}
    return write_manifest(config, tokenizer, vocab, shard_info, sources, report, image=image)
