"""Sources in, translations out, for the encoder-decoder: its tokenizer(s) and the engine's decoding.

A run prepared with ``tokenizer.separate`` has a tokenizer per side; the target tokenizer's ids follow
the source vocabulary (an offset), so both sides share one model vocabulary.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from aigc.checkpoint import Checkpoint, as_checkpoint
from aigc.errors import GenerationError
from aigc.generate.beam import BeamParams, Hypothesis
from aigc.generate.engine import Engine
from aigc.generate.sampling import SamplingParams
from aigc.models.seq2seq import Seq2Seq
from aigc.tasks.pairs.settings import BeamGenerate
from aigc.tokenizer import TARGET_TOKENIZER, eot_id


def beam_params(settings: BeamGenerate, max_new_tokens: int, n_best: int = 1) -> BeamParams | None:
    """The one reading of a run's beam settings (``generate.beams``, ``length_penalty``, ``no_repeat_ngram``) for
    ``aigc generate``, the server and evaluation alike; None when ``beams`` is 1 (greedy or sampling)."""
    if settings.beams <= 1:
        return None
    return BeamParams(beams=settings.beams, max_new_tokens=max_new_tokens, n_best=n_best,
                      length_penalty=settings.length_penalty, no_repeat_ngram=settings.no_repeat_ngram)


class Translator:
    def __init__(self, model: Seq2Seq, tokenizer: Tokenizer, target_tokenizer: Tokenizer | None = None):
        self.model, self.tokenizer, self.target_tokenizer = model, tokenizer, target_tokenizer
        self.engine = Engine(model)
        self.eot = eot_id(tokenizer)
        self.target_offset = tokenizer.get_vocab_size(with_added_tokens=True) if target_tokenizer else 0
        self.target_eot = self.target_offset + eot_id(target_tokenizer) if target_tokenizer else self.eot

    @classmethod
    def from_checkpoint(cls, source: Checkpoint | Path, device: str = "cpu") -> Translator:
        """Load a checkpoint folder or a run directory (its latest checkpoint)."""
        checkpoint = as_checkpoint(source)
        target = checkpoint.path / TARGET_TOKENIZER
        return cls(checkpoint.load_model(device), Tokenizer.from_file(str(checkpoint.path / "tokenizer.json")),
                   Tokenizer.from_file(str(target)) if target.is_file() else None)

    def decode(self, ids: list[int]) -> str:
        """Text of source-side ids."""
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def decode_target(self, ids: list[int]) -> str:
        """Text of output ids (the target tokenizer's, when the sides have their own)."""
        if self.target_tokenizer is None:
            return self.decode(ids)
        return self.target_tokenizer.decode([i - self.target_offset for i in ids], skip_special_tokens=False)

    def translate(self, sources: list[str], params: SamplingParams, beam: BeamParams | None = None,
                  n: int = 1) -> list[list[str]]:
        """Outputs for each source: ``beam.n_best`` texts with beam search, else ``n`` samples."""
        if any(not s.strip() for s in sources):
            raise GenerationError("a source text is empty; give something to translate")
        if n < 1:
            raise GenerationError(f"n must be at least 1, got {n}")
        room = self.engine.block_size - 1
        encoded = [self.tokenizer.encode(s, add_special_tokens=False).ids[:room] + [self.eot] for s in sources]
        if beam is None:
            encoded = [ids for ids in encoded for _ in range(n)]
        results = self.translate_ids(encoded, params, beam)
        texts = [[self.decode_target(h.tokens) for h in hypotheses] for hypotheses in results]
        if beam is None:
            texts = [sum(texts[i * n : (i + 1) * n], []) for i in range(len(sources))]
        return texts

    def translate_ids(self, sources: list[list[int]], params: SamplingParams,
                      beam: BeamParams | None = None) -> list[list[Hypothesis]]:
        """Engine translation of source ids (each ending with the end token): hypotheses per source."""
        return self.engine.translate(sources, self.target_eot, self.target_eot, params, beam)
