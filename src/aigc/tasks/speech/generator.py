"""Text in, speech out: the caption-prefix GPT, its codebooks, and Griffin-Lim.

The model reads ``caption(text, voice)`` (left-padded to ``audio_prefix`` tokens) and writes
``audio_frames * audio_levels`` audio tokens; the ``codebook`` buffer saved with the weights turns them back
into log-mel frames, and :func:`~aigc.tasks.speech.audio.to_wave` into sound. Sampling goes through
:func:`~aigc.tasks.caption_prefix.draw` (KV cache, temperature, top-k/p, seed, classifier-free guidance), one batch for all the
clips asked for at once.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from aigc.checkpoint import Checkpoint, as_checkpoint
from aigc.errors import GenerationError
from aigc.generate.engine import Engine
from aigc.generate.sampling import SamplingParams
from aigc.models.gpt import GPT
from aigc.tasks.caption_prefix import draw, left_padded
from aigc.tasks.speech.audio import change_speed, to_wave, trim_silence
from aigc.tasks.speech.codebook import decode_codes
from aigc.tasks.speech.model import AudioLevels
from aigc.tasks.speech.prepare import caption
from aigc.tokenizer import UNK, eot_id

log = logging.getLogger(__name__)
MAX_CHARACTERS = 200  # longer text cannot fit the prefix of any run trained here; refused, not silently cut


@dataclasses.dataclass(frozen=True)
class Utterance:
    """What to say: the text, the voice (None: the run's first), how many samples, at what speed."""

    text: str
    voice: str | None = None
    n: int = 1
    speed: float = 1.0


class SpeechGenerator:
    def __init__(self, model: GPT, tokenizer: Tokenizer):
        config = model.config
        if not config.audio_codes:
            raise GenerationError("this run's model does not speak (it has no model.audio_codes)")
        self.model, self.tokenizer, self.engine = model, tokenizer, Engine(model)
        self.codebooks = model.extras.codebook.cpu().numpy()
        self.levels, self.book_size, self.frames = config.audio_levels or 1, config.audio_codes, config.audio_frames or 1
        self.first_audio = config.vocab_size - self.levels * self.book_size
        self.voices = list(config.audio_voices)
        self.eot = eot_id(tokenizer)
        self.unknown = tokenizer.token_to_id(UNK)
        self.prefix = config.audio_prefix or 1

    @classmethod
    def from_checkpoint(cls, source: Checkpoint | Path, device: str = "cpu") -> SpeechGenerator:
        checkpoint = as_checkpoint(source)
        return cls(checkpoint.load_model(device, extras=AudioLevels), Tokenizer.from_file(str(checkpoint.path / "tokenizer.json")))

    def voice(self, voice: str | None) -> str | None:
        """``voice`` checked against the run's voices (None: the first); a run without voices takes none."""
        if not self.voices:
            if voice:
                raise GenerationError(f"this run was trained without voices; leave the voice out (got {voice!r})")
            return None
        if voice is None:
            return self.voices[0]
        if voice not in self.voices:
            raise GenerationError(f"unknown voice {voice!r}; this run speaks in {', '.join(self.voices)}")
        return voice

    def encode(self, text: str, voice: str | None) -> list[int]:
        """The text prefix (ids + end token, left-padded to ``audio_prefix``)."""
        if not text.strip():
            raise GenerationError("the input is empty; give the text to say")
        if len(text) > MAX_CHARACTERS:
            raise GenerationError(f"the input is {len(text)} characters; this model says at most {MAX_CHARACTERS}")
        ids = self.tokenizer.encode(caption(text.strip(), self.voice(voice)), add_special_tokens=False).ids
        if len(ids) > self.prefix - 1:
            raise GenerationError(f"the input is {len(ids)} tokens with its voice; this model reads at most "
                                  f"{self.prefix - 1} (it was trained on short texts): shorten it")
        unknown = sum(i == self.unknown for i in ids) if self.unknown is not None else 0
        if unknown:
            log.warning("%d character(s) of %r were never seen in training; speaking anyway", unknown, text)
        return left_padded(ids, self.prefix, self.eot)

    def codes(self, utterances: list[Utterance], params: SamplingParams, guidance: float = 1.0) -> list[np.ndarray]:
        """(frames, levels) codes of every sample of every utterance, in order."""
        if guidance < 0:
            raise GenerationError(f"the guidance scale must be 0 or more, got {guidance}")
        for u in utterances:
            if u.n < 1:
                raise GenerationError(f"n must be at least 1, got {u.n}")
        prefixes = [self.encode(u.text, u.voice) for u in utterances for _ in range(u.n)]
        tokens = draw(self.engine, prefixes, self.eot, self.frames * self.levels, self.first_audio, params, guidance)
        return [row.numpy().reshape(self.frames, self.levels) % self.book_size for row in tokens]

    def token_ids(self, codes: np.ndarray) -> np.ndarray:
        """(frames, levels) codes -> (frames * levels,) int64 token ids, as the shards hold them."""
        return (codes + self.first_audio + self.book_size * np.arange(self.levels)).reshape(-1).astype(np.int64)

    def waves(self, codes: list[np.ndarray], speeds: list[float] | None = None) -> list[np.ndarray]:
        """Codes -> (N,) float32 16 kHz waveforms, trailing silence cut, at ``speeds`` (default 1)."""
        speeds = speeds or [1.0] * len(codes)
        return [change_speed(trim_silence(to_wave(decode_codes(c, self.codebooks))), s) for c, s in zip(codes, speeds)]

    def say(self, utterances: list[Utterance], params: SamplingParams, guidance: float = 1.0) -> list[list[np.ndarray]]:
        """For each utterance its ``n`` waveforms."""
        codes = self.codes(utterances, params, guidance)
        waves = self.waves(codes, [u.speed for u in utterances for _ in range(u.n)])
        out, start = [], 0
        for u in utterances:
            out.append(waves[start : start + u.n])
            start += u.n
        return out
