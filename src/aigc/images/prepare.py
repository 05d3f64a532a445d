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

import hashlib

import numpy as np

from aigc.config import Config
from aigc.data.clean import CleaningReport
from aigc.data.collect import fingerprint
from aigc.data.prepare import TOKENIZER_FILE, PrepareResult, _finish, save_tokenizer
from aigc.data.shards import FORMAT_VERSION, MANIFEST, ShardWriter, token_dtype
from aigc.data.sources import resolve_sources
from aigc.errors import DataError
from aigc.files import file_hash, write_json
from aigc.images.pixels import grey_palette, kmeans_palette, quantise
from aigc.images.sources import ImageRecord, image_records, no_caption_help
from aigc.tokenizer import eot_id, load_tokenizer, train_bpe, train_char

IMAGE_SPLITS = ("train", "val", "test", "heldout")


def image_split(record: ImageRecord, val_fraction: float, test_fraction: float, seed: int) -> str:
    if record.split:
        return record.split
    digest = hashlib.blake2b(record.key.encode(), digest_size=8, key=seed.to_bytes(8, "little", signed=True)).digest()
    value = int.from_bytes(digest, "little") / 2**64
    if value < test_fraction:
        return "test"
    return "val" if value < test_fraction + val_fraction else "train"


def prepare_images(config: Config) -> PrepareResult:
    """Captioned images of ``config.data`` -> palette, tokenizer and shards in ``<run>/data``."""
    data, run_dir = config.data, config.run_dir
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MANIFEST).unlink(missing_ok=True)
    sources = resolve_sources(data) if data.paths else []
    report = CleaningReport()
    records = list(image_records(sources, data, report))
    if not records:
        raise DataError(f"no usable images in data.paths / data.builtin.\n{report.table()}{no_caption_help(report)}")
    splits = [image_split(r, data.val_fraction, data.test_fraction, config.seed) for r in records]
    train_images = np.stack([r.image for r, s in zip(records, splits) if s == "train"] or [records[0].image])
    palette = grey_palette(data.colors) if data.palette == "grey" else kmeans_palette(train_images, data.colors, config.seed)

    captions = [r.caption for r in records]
    if config.tokenizer.path is not None:
        tokenizer = load_tokenizer(config.tokenizer.path)
    elif config.tokenizer.kind == "char":
        tokenizer = train_char(captions, config.tokenizer.vocab_size)
    else:
        tokenizer = train_bpe(captions, config.tokenizer.vocab_size)
    eot = eot_id(tokenizer)
    offset = tokenizer.get_vocab_size(with_added_tokens=True)
    vocab = offset + len(palette)
    dtype = token_dtype(vocab)
    writers = {f"{split}.{side}": ShardWriter(data_dir / f".{split}.{side}.bin.tmp", dtype)
               for split in IMAGE_SPLITS for side in ("src", "tgt")}
    encoded = tokenizer.encode_batch(captions, add_special_tokens=False)
    for record, split, encoding in zip(records, splits, encoded):
        src = np.array([*encoding.ids, eot])
        tgt = np.append(quantise(record.image, palette) + offset, eot)
        writers[f"{split}.src"].write(src, 1, len(src))
        writers[f"{split}.tgt"].write(tgt, 1, len(tgt))
    shard_info = _finish(writers, data_dir)
    if not shard_info["train.src"]["documents"]:
        raise DataError("every image landed outside the train split; lower data.val_fraction / data.test_fraction")

    tokenizer_path = save_tokenizer(config, tokenizer)
    labels = {split: [r.label for r, s in zip(records, splits) if s == split] for split in IMAGE_SPLITS}
    manifest = {
        "format": FORMAT_VERSION,
        "kind": "images",
        "model_vocab_size": vocab,
        "dtype": dtype.name,
        "tokenizer": {"kind": config.tokenizer.kind, "vocab_size": offset, "eot_id": eot, "file": TOKENIZER_FILE,
                      "sha256": file_hash(tokenizer_path)},
        "image": {"size": data.image_size, "palette": palette.tolist(), "pixel_offset": offset, "vocab_size": vocab,
                  "prefix": max(len(e.ids) for e in encoded) + 1,
                  "builtin": list(data.builtin),
                  "labels": labels if data.builtin == ["digits"] else None},
        "splits": shard_info,
        "sources": {"files": [s.label for s in sources], "bytes": sum(s.path.stat().st_size for s in sources),
                    "fingerprint": fingerprint(sources)},
        "cleaning": report.to_dict(),
        "config": {"data": data.model_dump(mode="json"), "tokenizer": config.tokenizer.model_dump(mode="json")},
        "seed": config.seed,
    }
    write_json(data_dir / "cleaning_report.json", report.to_dict())
    write_json(data_dir / MANIFEST, manifest)
    return PrepareResult(manifest, report, data_dir)
