"""Evaluation of a speech run: likelihood, adherence, distortion, duration, diversity, copies, samples.

- bits per audio token: the model's negative log2-likelihood of the test clips' audio tokens;
- adherence (``spoken_words``): the share of generated clips that the :class:`~aigc.tasks.speech.judge.Judge`,
  trained on real training clips only, hears as the asked word, beside its accuracy on real test clips
  (the ceiling);
- mel-cepstral distortion: coefficients 1-12 of the MFCCs of a generated clip and of real clips of the same
  text and voice, aligned by dynamic time warping (librosa's ``dtw``), in dB, averaged over the path; beside
  it the same between two real clips of the same word and voice (different speed and pitch), its floor;
- duration error: seconds of sound (silence trimmed) against the real clips of the same text and voice;
- diversity: the distortion between two samples of one prompt (0: always the same clip);
- exact copies: samples whose audio tokens equal a training clip's;
- an unseen word: what the model says for text it never heard, judged and linked, not hidden.

Every generated clip is judged from its waveform (after Griffin-Lim), as a listener would hear it.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aigc.data.clean import CleaningReport
from aigc.data.pairs import split_pairs
from aigc.data.sources import resolve_sources
from aigc.data.split import assign_split
from aigc.generate.sampling import SamplingParams
from aigc.tasks.caption_prefix import bits_per_token
from aigc.tasks.speech.audio import SAMPLE_RATE, encode_audio, log_mel, trim_silence, voiced_seconds
from aigc.tasks.speech.generator import SpeechGenerator, Utterance
from aigc.tasks.speech.judge import Judge
from aigc.tasks.speech.sources import SpeechRecord, listing_files, speech_records

UNSEEN_TEXT = "purple"  # not among the spoken words: the report shows what the model does with it
MAX_PROMPTS = 64  # (text, voice) pairs evaluated, spread over texts and voices
SPECTROGRAMS = 8  # rows of the report's spectrogram grid


def mel_cepstrum(wave: np.ndarray) -> np.ndarray:
    """(12, T) MFCCs 1-12 (c0, the loudness, left out) of the clip's sound, in dB."""
    import librosa

    voiced = trim_silence(wave)
    frames = log_mel(voiced if len(voiced) > 1 else np.zeros(SAMPLE_RATE // 10, np.float32))
    return librosa.feature.mfcc(S=frames.T, n_mfcc=13)[1:]


def distortion(a: np.ndarray, b: np.ndarray) -> float:
    """Mel-cepstral distortion (dB) between two (12, T) cepstra along their DTW alignment: the standard
    MCD = 10/ln10 * sqrt(2 * sum_d (c_d - c'_d)^2) per aligned frame, averaged. The cepstra come from a dB
    (10 log10) mel spectrogram through librosa's orthonormal DCT, so the 10/ln10 is already in them."""
    import librosa

    _, path = librosa.sequence.dtw(X=a, Y=b, metric="euclidean")
    diff = a[:, path[:, 0]] - b[:, path[:, 1]]
    return float(np.mean(np.sqrt(2 * (diff**2).sum(axis=0))))


def _prompts(test: list[SpeechRecord], train: list[SpeechRecord]) -> list[tuple[str, str | None]]:
    """(text, voice) pairs to say: every pair of the test clips (else the training clips), spread, at most 64."""
    pairs = sorted({(r.text, r.voice or "") for r in (test or train)})
    step = max(1, math.ceil(len(pairs) / MAX_PROMPTS))
    return [(text, voice or None) for text, voice in pairs[::step][:MAX_PROMPTS]]


@dataclass
class References:
    """What generated clips are measured against: the run's real clips again (the same sources, seed and split),
    the (text, voice) prompts to say, and the judge when the clips are labelled words."""

    train: list[SpeechRecord]
    reference: list[SpeechRecord]  # the test split's clips, else val's
    by_prompt: dict[tuple[str, str | None], list[SpeechRecord]]
    prompts: list[tuple[str, str | None]]
    judge: Judge | None

    @classmethod
    def of_run(cls, config, manifest: dict) -> References:
        data, seed = config.data, manifest["seed"]
        sources = listing_files(resolve_sources(data)) if data.paths else []
        by_split: dict[str, list[SpeechRecord]] = defaultdict(list)
        for record in speech_records(sources, data, seed, CleaningReport()):
            by_split[assign_split(record.key, seed, data.val_fraction, data.test_fraction)].append(record)
        train, reference = by_split["train"], by_split["test"] or by_split["val"]
        by_prompt: dict[tuple[str, str | None], list[SpeechRecord]] = defaultdict(list)
        for record in train + reference:
            by_prompt[(record.text, record.voice)].append(record)
        labelled = [r for r in train if r.label]
        judge = (Judge([r.wave for r in labelled], [r.label for r in labelled])
                 if labelled and all(r.label for r in reference) else None)
        return cls(train, reference, by_prompt, _prompts(reference, train), judge)

    def score(self, groups: list[list[np.ndarray]], unseen: list[np.ndarray]) -> dict[str, Any]:
        """The metrics of ``groups`` (the samples of each of :attr:`prompts`) and of the ``unseen`` text's."""
        report: dict[str, Any] = {"samples_scored": sum(map(len, groups))}
        cepstra = [[mel_cepstrum(w) for w in group] for group in groups]
        real = {key: [mel_cepstrum(r.wave) for r in clips[:4]] for key, clips in self.by_prompt.items()}
        report["mel_cepstral_distortion"] = float(np.mean([
            np.mean([distortion(c, r) for r in real[p]]) for p, group in zip(self.prompts, cepstra) for c in group]))
        pairs = [distortion(clips[0], clips[1]) for p in self.prompts if len(clips := real[p]) > 1]
        report["real_mel_cepstral_distortion"] = float(np.mean(pairs)) if pairs else None
        report["duration_error_s"] = float(np.mean([
            abs(voiced_seconds(w) - np.mean([len(r.wave) / SAMPLE_RATE for r in self.by_prompt[p]]))
            for p, group in zip(self.prompts, groups) for w in group]))
        spread = [distortion(g[0], g[1]) for g in cepstra if len(g) > 1]
        report["sample_diversity"] = float(np.mean(spread)) if spread else None
        if self.judge is not None:
            report["classifier_real_accuracy"] = self.judge.accuracy([r.wave for r in self.reference],
                                                                     [r.label for r in self.reference])
            heard = self.judge.predict([w for g in groups for w in g])
            asked = [text for (text, _), group in zip(self.prompts, groups) for _ in group]
            report["adherence"] = float(np.mean([h == a for h, a in zip(heard, asked)]))
            report["unseen_heard_as"] = self.judge.predict(unseen)
        return report


def evaluate_speech(generator: SpeechGenerator, run_dir: Path, manifest: dict, config, log=print) -> dict[str, Any]:
    data_dir, eot = run_dir / "data", generator.eot
    test = split_pairs(data_dir, manifest, "test") or split_pairs(data_dir, manifest, "val")
    bits, scored = bits_per_token(generator.model, test, eot, generator.prefix) if test else (float("nan"), 0)
    train_keys = {t[:-1].astype(np.int64).tobytes() for _, t in split_pairs(data_dir, manifest, "train")}
    ec, gc = config.eval, config.generate
    report: dict[str, Any] = {"bits_per_audio_token": bits, "audio_tokens_scored": scored, "guidance": gc.guidance}

    log("evaluation: reading the real clips again for the judge and the distortion references")
    refs = References.of_run(config, manifest)
    per_prompt = ec.samples_per_prompt
    params = SamplingParams(temperature=gc.temperature or 1.0, top_k=gc.top_k, top_p=gc.top_p, seed=config.seed)
    utterances = [Utterance(t, v, per_prompt) for t, v in refs.prompts] + [Utterance(UNSEEN_TEXT, None, per_prompt)]
    started = time.perf_counter()
    codes = generator.codes(utterances, params, gc.guidance)
    waves = generator.waves(codes)
    report["audio_seconds_per_s"] = sum(len(w) for w in waves) / SAMPLE_RATE / (time.perf_counter() - started)
    groups = [waves[i * per_prompt : (i + 1) * per_prompt] for i in range(len(utterances))]
    unseen = groups.pop()
    report["exact_training_copies"] = sum(generator.token_ids(c).tobytes() in train_keys for c in codes[:-per_prompt])
    report |= refs.score(groups, unseen)
    report["samples"] = _write_samples(run_dir / "eval", refs.prompts, groups, unseen, report.get("unseen_heard_as"))
    return report


def _write_samples(folder: Path, prompts, groups, unseen, unseen_heard) -> list[dict[str, Any]]:
    """The first sample of each prompt as a WAV (and the unseen text's), a spectrogram grid PNG; the entries."""
    samples_dir = folder / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, ((text, voice), group) in enumerate([*zip(prompts, groups), ((UNSEEN_TEXT, None), unseen)]):
        path = samples_dir / f"prompt_{i:02d}.wav"
        path.write_bytes(encode_audio(group[0], "wav"))
        entry = {"prompt": text, "voice": voice, "wav": str(path.relative_to(folder)),
                 "seconds": round(len(group[0]) / SAMPLE_RATE, 3)}
        if text == UNSEEN_TEXT and i == len(prompts):
            entry["note"] = ("a word never heard in training" + (f"; the judge hears {', '.join(unseen_heard)}"
                                                                   if unseen_heard else ""))
        entries.append(entry)
    grid = _spectrogram_grid([g[0] for g in groups[:SPECTROGRAMS]] + [unseen[0]],
                             [f"{t} ({v})" if v else t for t, v in prompts[:SPECTROGRAMS]] + [f"{UNSEEN_TEXT} (unseen)"],
                             samples_dir / "spectrograms.png")
    entries.insert(0, {"prompt": "spectrograms", "grid": str(grid.relative_to(folder))})
    return entries


def _spectrogram_grid(waves: list[np.ndarray], titles: list[str], out: Path) -> Path:
    """One log-mel spectrogram per clip, in a grid of three columns, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(waves) / 3)
    figure, axes = plt.subplots(rows, 3, figsize=(9, 2.2 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, wave, title in zip(axes.flat, waves, titles):
        axis.imshow(log_mel(wave).T, origin="lower", aspect="auto", cmap="magma")
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(out, dpi=80)
    plt.close(figure)
    return out
