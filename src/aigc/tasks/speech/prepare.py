"""The prepare stage for speech: split, codebooks, text tokenizer, and shards of audio tokens.

The shards have the layout of source/target pairs (``{split}.src.bin`` the text, ``{split}.tgt.bin`` the
audio tokens, each sequence followed by ``<|endoftext|>``), like captioned images. Every clip is padded with
silence to ``data.max_seconds`` (so every target has the same length and ends in silence), turned into
log-mel frames, and each frame into one token per codebook level: ``audio_offset + level * size + code``.
The text is ``caption(text, voice)``: the voice is read by the model, so generation can choose it.

The manifest's ``speech`` section holds the codebooks, frames per clip, levels, offset, ``prefix`` (the
longest caption in tokens, with its end token), the voices, and the word of each clip of each split (the
judge's labels).
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
from aigc.tasks.speech.audio import N_MELS, SAMPLE_RATE, frames_for, log_mel
from aigc.tasks.speech.codebook import encode_frames, fit_codebooks
from aigc.tasks.speech.sources import SpeechRecord, listing_files, speech_records
from aigc.tokenizer import eot_id, tokenizer_for

SPEECH_SPLITS = ("train", "val", "test")


def caption(text: str, voice: str | None) -> str:
    """What the model reads before it speaks: ``"f2: seven"``, or the text alone for a run without voices."""
    return f"{voice}: {text}" if voice else text


def padded_frames(record: SpeechRecord, seconds: float) -> np.ndarray:
    """(frames_for(seconds), N_MELS) log-mel frames of the clip followed by silence."""
    wave = np.zeros(int(round(seconds * SAMPLE_RATE)), np.float32)
    wave[: len(record.wave)] = record.wave[: len(wave)]
    return log_mel(wave)


def prepare_speech(config: Config) -> PrepareResult:
    """Spoken clips of ``config.data`` -> codebooks, tokenizer and shards in ``<run>/data``."""
    data = config.data
    data_dir = data_folder(config)
    sources = listing_files(resolve_sources(data)) if data.paths else []
    if data.paths and not sources:
        raise DataError("data.paths holds no metadata.csv (LJSpeech's layout: id|text beside wavs/) and no "
                        "captions.jsonl ({\"audio\": ..., \"text\": ...} lines); give a folder with one of them")
    report = CleaningReport()
    records = list(speech_records(sources, data, config.seed, report))
    if not records:
        raise DataError(f"no usable clips in data.paths / data.builtin.\n{report.table()}")
    splits = [assign_split(r.key, config.seed, data.val_fraction, data.test_fraction) for r in records]
    if "train" not in splits:
        raise DataError("every clip landed outside the train split; lower data.val_fraction / data.test_fraction")
    frames = [padded_frames(r, data.max_seconds) for r in records]
    voiced = np.concatenate([log_mel(r.wave) for r, s in zip(records, splits) if s == "train"])
    try:
        books = fit_codebooks(voiced, data.codebook_size, data.codebooks, config.seed)
    except ValueError as err:
        raise DataError(str(err)) from None

    captions = [caption(r.text, r.voice) for r in records]
    tokenizer = tokenizer_for(config.tokenizer, captions)
    eot = eot_id(tokenizer)
    offset = tokenizer.get_vocab_size(with_added_tokens=True)
    vocab = offset + data.codebooks * data.codebook_size
    writers = shard_writers(data_dir, [f"{split}.{side}" for split in SPEECH_SPLITS for side in ("src", "tgt")],
                            token_dtype(vocab))
    encoded = tokenizer.encode_batch(captions, add_special_tokens=False)
    level_offsets = offset + data.codebook_size * np.arange(data.codebooks)
    for clip, split, encoding in zip(frames, splits, encoded):
        src = np.array([*encoding.ids, eot])
        tgt = np.append((encode_frames(clip, books) + level_offsets).reshape(-1), eot)
        writers[f"{split}.src"].write(src, 1, len(src))
        writers[f"{split}.tgt"].write(tgt, 1, len(tgt))
    shard_info = finish_shards(writers, data_dir)
    speech = {
        "codebooks": books.tolist(), "codebook_size": data.codebook_size, "levels": data.codebooks, "mels": N_MELS,
        "frames": frames_for(data.max_seconds), "audio_offset": offset, "vocab_size": vocab,
        "prefix": max(len(e.ids) for e in encoded) + 1, "builtin": list(data.builtin),
        "voices": sorted({r.voice for r in records if r.voice}),
        "labels": {split: [r.label for r, s in zip(records, splits) if s == split] for split in SPEECH_SPLITS},
        "texts": {split: [r.text for r, s in zip(records, splits) if s == split] for split in SPEECH_SPLITS},
        "voice_of": {split: [r.voice for r, s in zip(records, splits) if s == split] for split in SPEECH_SPLITS},
    }
    return write_manifest(config, tokenizer, vocab, shard_info, sources, report, speech=speech)
