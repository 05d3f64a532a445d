"""Audio as tokens: espeak-ng's corpus, codebooks, the round trip back to sound, users' folders, sampling."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile
import torch

from aigc.config import ModelConfig
from aigc.data.clean import CleaningReport
from aigc.data.sources import resolve_sources
from aigc.errors import GenerationError
from aigc.generate.engine import Engine
from aigc.generate.sampling import SamplingParams, choose
from aigc.models.gpt import GPT
from aigc.tasks.speech.audio import SAMPLE_RATE, encode_audio, load_audio, log_mel, to_wave, trim_silence
from aigc.tasks.speech.codebook import decode_codes, encode_frames, fit_codebooks
from aigc.tasks.speech.judge import Judge
from aigc.tasks.speech.model import AudioLevels
from aigc.tasks.speech.settings import SpeechData
from aigc.tasks.speech.sources import _espeak, listing_files, speech_records, spoken_words

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng)")
WORDS = ("yes", "no", "up", "down", "left", "right", "seven", "eight")


@pytest.fixture(scope="module")
def clips():
    """Eight words in four voices: train at two speeds, test at a third, unseen, speed and pitch."""
    train = [(w, trim_silence(_espeak(w, v, s, p))) for w in WORDS for v in ("m1", "m3", "f2", "f4")
             for s, p in ((140, 40), (180, 60))]
    test = [(w, trim_silence(_espeak(w, v, 160, 50))) for w in WORDS for v in ("m1", "m3", "f2", "f4")]
    return train, test


@needs_espeak
def test_a_clip_through_the_codebook_and_griffin_lim_is_still_recognised(clips):
    train, test = clips
    judge = Judge([w for _, w in train], [label for label, _ in train])
    labels = [label for label, _ in test]
    ceiling = judge.accuracy([w for _, w in test], labels)
    books = fit_codebooks(np.concatenate([log_mel(w) for _, w in train]), 128, 1, seed=0)
    round_trip = [to_wave(decode_codes(encode_frames(log_mel(w), books), books)) for _, w in test]
    recognised = judge.accuracy(round_trip, labels)
    # measured: ceiling 1.00, after the round trip 1.00 (32 clips); chance is 1 in 8
    assert ceiling >= 0.9, f"the judge recognises {ceiling:.2f} of real held-out clips"
    assert recognised >= 0.8, f"{recognised:.2f} of the round-tripped clips recognised (real clips {ceiling:.2f})"


@needs_espeak
def test_codebooks_are_reproducible_for_a_seed_and_keep_silence_exact(clips):
    frames = np.concatenate([log_mel(w) for _, w in clips[0][:24]])
    first, again, other = (fit_codebooks(frames, 32, 2, seed) for seed in (3, 3, 4))
    assert first.shape == (2, 32, frames.shape[1])
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    silence = np.full((5, frames.shape[1]), -80.0, np.float32)
    codes = encode_frames(silence, first)
    assert (codes[:, 0] == 0).all()
    np.testing.assert_array_equal(decode_codes(codes, first), silence)


@needs_espeak
def test_the_built_in_corpus_is_the_same_for_a_seed():
    first, again, other = (next(spoken_words(seed)) for seed in (7, 7, 8))
    assert first[2] == again[2] and first[2] != other[2]  # the key names the seed's jittered speed and pitch
    np.testing.assert_array_equal(first[1].wave, again[1].wave)
    label, record, key = first
    assert record.text == "yes" and record.voice == "m1" and record.label == "yes"
    assert 0.2 < len(trim_silence(record.wave)) / SAMPLE_RATE < 1.0


def _tone(seconds: float, rate: int = SAMPLE_RATE, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)


def test_an_ljspeech_folder_is_read_resampled_and_its_broken_clips_counted(tmp_path):
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    soundfile.write(wavs / "a.wav", _tone(0.5, 22_050), 22_050)  # another sample rate: resampled
    soundfile.write(wavs / "silent.wav", np.zeros(8000, np.float32), SAMPLE_RATE)
    soundfile.write(wavs / "long.wav", _tone(3.0), SAMPLE_RATE)
    (wavs / "broken.wav").write_bytes(b"RIFF not really a wav")
    (tmp_path / "metadata.csv").write_text("a|Hello there|hello there\nsilent|quiet\nlong|too long\n"
                                           "broken|broken file\nmissing|no file\nnot a row\n", encoding="utf-8")
    config = SpeechData(paths=[str(tmp_path)], max_seconds=1.0)
    report = CleaningReport()
    records = list(speech_records(listing_files(resolve_sources(config)), config, 0, report))
    assert [(r.text, r.voice) for r in records] == [("hello there", None)]
    assert abs(len(records[0].wave) / SAMPLE_RATE - 0.5) < 0.1
    assert {reason: t.count for reason, t in report.dropped.items()} == {
        "silent_audio": 1, "too_long": 1, "unreadable_audio": 1, "missing_audio": 1, "malformed_row": 1}


def test_a_captions_jsonl_names_voices_and_its_bad_lines_are_counted(tmp_path):
    soundfile.write(tmp_path / "one.wav", _tone(0.4), SAMPLE_RATE)
    lines = [{"audio": "one.wav", "text": "one", "voice": "ann"}, {"audio": "one.wav"}, "not json"]
    (tmp_path / "captions.jsonl").write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    config = SpeechData(paths=[str(tmp_path / "captions.jsonl")])
    report = CleaningReport()
    records = list(speech_records(listing_files(resolve_sources(config)), config, 0, report))
    assert [(r.text, r.voice) for r in records] == [("one", "ann")]
    assert report.dropped["malformed_row"].count == 2


def test_wav_and_pcm_bytes():
    wave = _tone(0.5)
    wav = encode_audio(wave, "wav")
    assert soundfile.info(__import__("io").BytesIO(wav)).samplerate == SAMPLE_RATE
    assert abs(len(load_audio(wav)) - len(wave)) <= 1
    pcm = encode_audio(wave, "pcm")  # 16-bit samples at 24 kHz, as OpenAI's pcm
    assert abs(len(pcm) // 2 - 24_000 * 0.5) <= 2


def _speech_model(levels: int = 1, text_vocab: int = 10, prefix: int = 5, voices: tuple[str, ...] = ()) -> GPT:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=text_vocab + 16 * levels, n_layer=2, n_head=2, n_embd=32, block_size=40,
                         audio_codes=16, audio_levels=levels, audio_mels=4, audio_prefix=prefix, audio_frames=12,
                         audio_voices=list(voices))
    return GPT(config, AudioLevels).eval()


@pytest.mark.parametrize("levels", [1, 2])
@torch.inference_mode()
def test_cached_drawing_equals_recomputing_the_whole_sequence(levels):
    """Engine.draw (KV cache, guidance) against a loop that runs the model over the whole sequence each step."""
    model = _speech_model(levels)
    prefixes, blank = [[1, 2, 3, 4, 0], [0, 0, 5, 6, 0]], [0] * 5
    params, guidance, length, first = SamplingParams(temperature=1.0, top_k=8, seed=11), 2.0, 12 * levels, 10
    cached = Engine(model).draw(prefixes, blank, length, first, params, guidance)
    rows = torch.tensor(prefixes + [blank] * 2)
    generators = [torch.Generator().manual_seed(params.seed + row) for row in range(2)]  # row i: seed + i
    for _ in range(length):
        logits = model(rows)[:, -1, first:]
        logits = logits[2:] + guidance * (logits[:2] - logits[2:])
        drawn = choose(logits, params, generators)
        rows = torch.cat([rows, (drawn + first).repeat(2)[:, None]], dim=1)
    np.testing.assert_array_equal(cached.numpy(), (rows[:2, 5:] - first).numpy())


def test_the_generator_refuses_bad_input():
    from tokenizers import Tokenizer

    from aigc.tasks.speech.generator import SpeechGenerator, Utterance
    from aigc.tokenizer import train_char

    tokenizer = train_char(["m1: yes", "f2: no"], 64)
    model = _speech_model(text_vocab=tokenizer.get_vocab_size(), prefix=9, voices=("m1", "f2"))
    generator = SpeechGenerator(model, Tokenizer.from_str(tokenizer.to_str()))
    params = SamplingParams(seed=0)
    with pytest.raises(GenerationError, match="input is empty"):
        generator.codes([Utterance("  ")], params)
    with pytest.raises(GenerationError, match="unknown voice 'zz'; this run speaks in m1, f2"):
        generator.codes([Utterance("yes", "zz")], params)
    with pytest.raises(GenerationError, match="reads at most 8"):
        generator.codes([Utterance("a much longer text")], params)
    with pytest.raises(GenerationError, match="n must be at least 1"):
        generator.codes([Utterance("yes", n=0)], params)
    codes = generator.codes([Utterance("yes", "f2", n=2)], params)
    assert len(codes) == 2 and codes[0].shape == (12, 1) and codes[0].max() < 16


def test_a_speech_run_is_neither_a_fine_tuning_base_nor_an_export_source(tmp_path):
    """A speech GPT is a GPT with audio tokens: ``model.init`` and ``aigc export`` refuse it by the same rule."""
    from aigc.checkpoint import save_checkpoint
    from aigc.config import load_config
    from aigc.errors import CheckpointError, ConfigError
    from aigc.pretrained.exporter import export_run
    from aigc.pretrained.init import resolve_init
    from aigc.tokenizer import train_char

    speech = tmp_path / "speech"
    speech.mkdir()
    train_char(["m1: yes"], 64).save(str(speech / "tokenizer.json"))
    model = _speech_model(text_vocab=64, prefix=9, voices=("m1",))
    config = load_config("speech", [f"run.dir={speech}"]).model_copy(update={"model": model.config})
    checkpoint = save_checkpoint(speech, 1, config, model.state_dict(), {}, {})
    with pytest.raises(ConfigError, match="is not a text GPT run"):
        resolve_init(load_config("text", [f"run.dir={tmp_path / 'tuned'}", f"model.init={checkpoint}"]))
    with pytest.raises(CheckpointError, match="is not a text GPT run"):
        export_run(checkpoint, tmp_path / "out")
