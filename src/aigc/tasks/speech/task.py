"""Speech from text: spoken clips as codebook tokens for the caption-prefix GPT (the ``aigc.tasks.speech`` package)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from aigc.checkpoint import Checkpoint
from aigc.config import Config, GenerateConfig
from aigc.data.clean import CleaningReport
from aigc.data.collect import CollectResult, write_sources
from aigc.data.prepare import PrepareResult
from aigc.data.sources import resolve_sources
from aigc.errors import DataError, GenerationError, TrainingError
from aigc.generate.sampling import sampling_params
from aigc.tasks.base import GenerateRequest, Task
from aigc.tasks.caption_prefix import prefix_samplers
from aigc.tasks.speech.audio import encode_audio
from aigc.tasks.speech.evaluation import evaluate_speech
from aigc.tasks.speech.generator import SpeechGenerator, Utterance
from aigc.tasks.speech.model import AudioLevels
from aigc.tasks.speech.prepare import prepare_speech
from aigc.tasks.speech.sources import ESPEAK_HELP, clip_count, listing_files

if TYPE_CHECKING:
    from aigc.serve.workers import ServedModel


class SpeechTask(Task):
    name, model_kind, describes = "speech", "gpt", "spoken clips"
    report_keys = ("guidance", "adherence", "classifier_real_accuracy", "sample_diversity", "exact_training_copies",
                   "bits_per_audio_token", "audio_tokens_scored", "samples_scored", "mel_cepstral_distortion",
                   "real_mel_cepstral_distortion", "duration_error_s", "audio_seconds_per_s")

    def summary_lines(self, report: dict[str, Any]) -> list[str]:
        r = report
        lines = [f"test bits/audio token {r['bits_per_audio_token']:.3f}; {r['audio_seconds_per_s']:.1f} s of "
                 f"audio per second at guidance {r['guidance']:g}"]
        if "adherence" in r:
            lines.append(f"prompt adherence {r['adherence']:.1%} (classifier on real clips: "
                         f"{r['classifier_real_accuracy']:.1%}); unseen word heard as {', '.join(r['unseen_heard_as'])}")
        floor, spread = r["real_mel_cepstral_distortion"], r["sample_diversity"]
        lines.append(f"mel-cepstral distortion {r['mel_cepstral_distortion']:.2f} dB"
                     + (f" (real vs real {floor:.2f})" if floor is not None else "")
                     + f"; duration error {r['duration_error_s']:.3f} s"
                     + (f"; diversity {spread:.2f} dB" if spread is not None else "")
                     + f"; {r['exact_training_copies']} exact training copies")
        return lines

    def metrics(self, config: Config) -> dict[str, str | None]:
        judged = "spoken_words" in config.data.builtin and not config.data.paths
        return {"val_loss": None, "adherence": None if judged else
                "data.builtin=[spoken_words] and no data.paths (the judge knows those words, not a folder's clips)"}

    def collect(self, config: Config) -> CollectResult:
        if "spoken_words" in config.data.builtin and shutil.which("espeak-ng") is None:
            raise DataError(ESPEAK_HELP)
        sources = listing_files(resolve_sources(config.data)) if config.data.paths else []
        return write_sources(config, [], [], CleaningReport(), records=clip_count(sources, config.data))

    def prepare(self, config: Config) -> PrepareResult:
        return prepare_speech(config)

    def model_config(self, config: Config, manifest: dict) -> Config:
        """The codebooks, frames per clip, text length and voices come from the data, like the vocabulary."""
        config = super().model_config(config, manifest)
        speech = manifest["speech"]
        update = {"audio_codes": speech["codebook_size"], "audio_levels": speech["levels"], "audio_mels": speech["mels"],
                  "audio_prefix": speech["prefix"], "audio_frames": speech["frames"], "audio_voices": speech["voices"]}
        config = config.model_copy(update={"model": config.model.model_copy(update=update)})
        needed = speech["prefix"] + speech["frames"] * speech["levels"] - 1
        if config.model.block_size < needed:
            raise TrainingError(f"model.block_size={config.model.block_size} is too short for a {speech['prefix']}-token "
                                f"text and {speech['frames']} frames x {speech['levels']} codebook(s); set "
                                f"model.block_size={needed} or more (or lower data.max_seconds)")
        return config

    def samplers(self, config: Config, manifest: dict, rank: int, world: int) -> tuple[Any, Any | None]:
        return prefix_samplers(config, manifest, manifest["speech"]["prefix"], rank, world)

    def model_extras(self) -> type[AudioLevels]:
        return AudioLevels

    def init_model(self, model: nn.Module, manifest: dict) -> None:
        """The codebooks (each audio token's log-mel frame) are saved with the weights."""
        model.extras.codebook.copy_(torch.tensor(manifest["speech"]["codebooks"], dtype=torch.float32))

    def generator(self, checkpoint: Checkpoint, device: str = "cpu", base: nn.Module | None = None) -> SpeechGenerator:
        return SpeechGenerator.from_checkpoint(checkpoint, device)

    def served_model(self) -> type[ServedModel]:
        from aigc.tasks.speech.served import SpeechModel

        return SpeechModel

    def evaluate(self, generator: SpeechGenerator, run_dir: Path, manifest: dict, config: Config,
                 log: Callable[[str], None]) -> dict[str, Any]:
        return evaluate_speech(generator, run_dir, manifest, config, log)

    def sample_markdown(self, samples: list[dict[str, Any]]) -> list[str]:
        lines = []
        for s in samples:
            if "grid" in s:
                lines += [f"![{s['prompt']}]({s['grid']})", ""]
                continue
            voice = f" ({s['voice']})" if s.get("voice") else ""
            note = f": {s['note']}" if "note" in s else ""
            lines.append(f"- **{s['prompt']}**{voice}{note}: [{s['wav']}]({s['wav']}) ({s['seconds']:.2f} s)")
        return lines

    def sample_text(self, sample: dict[str, Any], eval_dir: Path) -> str:
        return f"{sample['prompt']} -> {eval_dir / sample.get('wav', sample.get('grid', ''))}"

    def generate(self, generator: SpeechGenerator, request: GenerateRequest, settings: GenerateConfig,
                 write: Callable[[str], None]) -> None:
        """``n`` clips of the prompt in ``settings.voice``: one WAV (``--out seven.wav``, n = 1) or one WAV each
        (``--out folder/``)."""
        if request.prompt is None:
            raise GenerationError("a speech run needs --prompt with the text to say, e.g. --prompt \"seven\"")
        if not request.out:
            raise GenerationError("a speech run writes WAV files: add --out clip.wav (one clip) or --out folder/ "
                                  "(one WAV per sample)")
        out = Path(request.out)
        as_folder = request.out.endswith(("/", "\\")) or out.is_dir()
        if not as_folder and out.suffix.lower() != ".wav":
            raise GenerationError(f"--out {request.out}: speech is written as WAV; name it *.wav, or end the path "
                                  "with / for a folder")
        if not as_folder and request.n > 1:
            raise GenerationError(f"--n {request.n} makes {request.n} clips; give a folder (--out clips/) for them")
        params = sampling_params(settings, seed=request.seed)
        utterance = Utterance(request.prompt, settings.voice, request.n, settings.speed)
        waves = generator.say([utterance], params, settings.guidance)[0]
        paths = [out / f"sample_{i:03d}.wav" for i in range(len(waves))] if as_folder else [out]
        for path, wave in zip(paths, waves):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_audio(wave, "wav"))
        write("".join(f"{path}\n" for path in paths))
