"""Spoken clips with their text: the built-in ``spoken_words`` corpus and users' recordings.

``spoken_words``: the 35 words of the Speech Commands vocabulary, synthesised on this machine by
espeak-ng in four voices (``m1 m3 f2 f4``), three speeds and three pitches, each jittered by the seed:
1,260 clips, the same for the same seed, with no download. The voice is part of what the model reads, so
generation can ask for one.

A user's folder (or its listing file in ``data.paths``) is either LJSpeech's layout, ``metadata.csv`` with
``id|text`` lines (a third, normalised column is preferred when present) beside ``wavs/<id>.wav``, or a
``captions.jsonl`` of ``{"audio": "relative/path.wav", "text": "...", "voice": "optional"}`` lines. Clips
in other sample rates are resampled; unreadable, silent and too-long clips are counted in the report,
never fatal.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aigc.config import DataConfig
from aigc.data.clean import CleaningReport
from aigc.data.sources import SourceFile
from aigc.errors import DataError
from aigc.tasks.speech.audio import SAMPLE_RATE, load_audio, trim_silence

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "zero", "one", "two", "three",
         "four", "five", "six", "seven", "eight", "nine", "bed", "bird", "cat", "dog", "happy", "house", "marvin",
         "sheila", "tree", "wow", "backward", "forward", "follow", "learn", "visual")
VOICES = {"m1": "en+m1", "m3": "en+m3", "f2": "en+f2", "f4": "en+f4"}  # our name -> espeak-ng's voice
SPEEDS = (130, 160, 190)  # words per minute
PITCHES = (35, 50, 65)  # espeak-ng's 0-99 scale
LISTINGS = ("metadata.csv", "captions.jsonl")
SILENT_PEAK = 1e-3  # a clip whose loudest sample is below this holds no sound
ESPEAK_HELP = ("the spoken_words corpus is synthesised with espeak-ng, which is not installed: "
               "apt-get install espeak-ng (Debian/Ubuntu), brew install espeak-ng (macOS), or give your own "
               "recordings with data.builtin=[] data.paths=[folder/]")


@dataclass(frozen=True)
class SpeechRecord:
    text: str  # what is said
    wave: np.ndarray  # (N,) float32 at 16 kHz, silence trimmed
    key: str  # stable identity for the split hash
    voice: str | None = None
    label: str | None = None  # spoken_words: the word, what the judge recognises


def speech_records(sources: list[SourceFile], config: DataConfig, seed: int,
                   report: CleaningReport) -> Iterator[SpeechRecord]:
    """Every usable clip of the built-in corpora and of the listing files among ``sources``."""
    for name in config.builtin:
        if name == "spoken_words":
            yield from _checked(spoken_words(seed), config, report)
    for source in sources:
        if source.path.name in LISTINGS or source.path.suffix == ".jsonl":
            yield from _checked(_listed_clips(source.path, report), config, report)


def listing_files(sources: list[SourceFile]) -> list[SourceFile]:
    return [s for s in sources if s.path.name in LISTINGS or s.path.suffix == ".jsonl"]


def clip_count(sources: list[SourceFile], config: DataConfig) -> int:
    """How many clips the built-in corpora and the listings name, without synthesising or decoding any (collect's
    count; prepare reads them and reports the ones it cannot use)."""
    builtin = len(WORDS) * len(VOICES) * len(SPEEDS) * len(PITCHES) if "spoken_words" in config.builtin else 0
    listed = 0
    for source in listing_files(sources):
        with source.path.open(encoding="utf-8", errors="replace") as handle:
            listed += sum(1 for line in handle if line.strip())
    return builtin + listed


Listed = tuple[str, str | None, Path]  # a listing's (text, voice, audio file)


def _checked(clips: Iterator[tuple[str, SpeechRecord | Listed, str]], config: DataConfig,
             report: CleaningReport) -> Iterator[SpeechRecord]:
    """Load (when given a file), trim and vet each ``(label, clip, key)``; failures are counted with the clip."""
    for label, clip, key in clips:
        record = clip
        if isinstance(clip, tuple):
            text, voice, path = clip
            if not path.is_file():
                report.drop("missing_audio", label, 0, str(path))
                continue
            try:
                wave = load_audio(path)
            except Exception as err:  # libsndfile's and the resampler's errors alike: the clip, not the run
                report.drop("unreadable_audio", label, path.stat().st_size,
                            str(err).splitlines()[0][:120] if str(err) else type(err).__name__)
                continue
            record = SpeechRecord(text, wave, key, voice)
        if not record.text.strip():
            report.drop("empty_text", label, 0)
            continue
        if not record.wave.size or float(np.abs(record.wave).max()) < SILENT_PEAK:
            report.drop("silent_audio", label, record.wave.nbytes)
            continue
        wave = trim_silence(record.wave)
        seconds = len(wave) / SAMPLE_RATE
        if seconds > config.max_seconds:
            report.drop("too_long", label, record.wave.nbytes, f"{seconds:.2f} s > data.max_seconds={config.max_seconds}")
            continue
        report.keep(wave.nbytes)
        yield SpeechRecord(record.text.strip(), wave, record.key, record.voice, record.label)


def _listed_clips(listing: Path, report: CleaningReport) -> Iterator[tuple[str, Listed, str]]:
    """(label, (text, voice, audio path), key) for each line of an LJSpeech ``metadata.csv`` or a ``.jsonl``."""
    folder = listing.parent
    with listing.open(encoding="utf-8", errors="replace", newline="") as handle:
        if listing.suffix == ".csv":
            for number, row in enumerate(csv.reader(handle, delimiter="|", quoting=csv.QUOTE_NONE), 1):
                label = f"{listing}:{number}"
                if len(row) < 2 or not row[0].strip():
                    report.drop("malformed_row", label, 0, "|".join(row)[:80])
                    continue
                text = row[2] if len(row) > 2 and row[2].strip() else row[1]
                yield label, (text, None, folder / "wavs" / f"{row[0].strip()}.wav"), row[0].strip()
            return
        for number, line in enumerate(handle, 1):
            label = f"{listing}:{number}"
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                path, text = item["audio"], item["text"]
                voice = item.get("voice")
                if not isinstance(path, str) or not isinstance(text, str) or not isinstance(voice, (str, type(None))):
                    raise TypeError("audio, text and voice must be strings")
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
                report.drop("malformed_row", label, len(line), f"{type(err).__name__}: {err}"[:120])
                continue
            yield label, (text, voice, folder / path), path


def spoken_words(seed: int) -> Iterator[tuple[str, SpeechRecord, str]]:
    """The built-in corpus: every word in every voice, speed and pitch (each jittered by ``seed``)."""
    if shutil.which("espeak-ng") is None:
        raise DataError(ESPEAK_HELP)
    rng = np.random.default_rng(seed)
    jobs = [(word, voice, speed + int(rng.integers(-8, 9)), pitch + int(rng.integers(-5, 6)))
            for word in WORDS for voice in VOICES for speed in SPEEDS for pitch in PITCHES]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for (word, voice, speed, pitch), wave in zip(jobs, pool.map(lambda job: _espeak(*job), jobs)):
            key = f"{word}/{voice}/{speed}/{pitch}"
            yield f"spoken_words:{key}", SpeechRecord(word, wave, key, voice, word), key


def _espeak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
    done = subprocess.run(["espeak-ng", "-v", VOICES[voice], "-s", str(speed), "-p", str(pitch), "--stdout", word],
                          capture_output=True, timeout=60, check=False)
    if done.returncode != 0 or not done.stdout:
        raise DataError(f"espeak-ng failed on {word!r} ({voice}): {done.stderr.decode(errors='replace').strip()}")
    return load_audio(done.stdout)
