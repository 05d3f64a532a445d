"""Speech from text on this machine: the speech recipe within 10 CPU minutes, against Hugging Face ImageGPT.

1. ``aigc run speech`` as a user runs it (collect, prepare, train for the recipe's 6 minutes, evaluate): the
   wall time of the whole pipeline must stay within 10 minutes.
2. The peer: Hugging Face ``ImageGPTForCausalImageModeling`` (random init), GPT-2 for sequences of k-means
   codes, built for exactly this (pixels quantised by k-means; here log-mel frames quantised by k-means), of
   the same depth, width and heads, trained by ``benchmarks/images.py``'s loop on the very same batches (our
   ``PrefixSampler``: text prefix, then audio tokens, the loss on audio only, the recipe's caption dropout) with
   the same optimizer, schedule and time as our training stage. No peer is downloaded.
3. Both say the evaluation's prompts (every word and voice of the test clips, 2 samples each) with the same
   sampling (temperature 1, no top-k, the KV cache, audio tokens only), with and without classifier-free
   guidance; both go back to sound through the run's codebook and Griffin-Lim and are scored by the same judge
   (an MFCC classifier trained on real clips only) and the same mel-cepstral distortion. Seconds of audio made
   per second at batch 1 and 8 include Griffin-Lim.

Target: our adherence at least 90% of the judge's ceiling on real clips. A peer whose unguided adherence is not
three times chance (1 in 35) has not learned, and the table says the comparison is void.

    python benchmarks/speech.py            # about 20 minutes
    python benchmarks/speech.py --quick    # smoke run: 0.3-minute training, the numbers say nothing
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from aigc.config import load_config
from aigc.data.pairs import split_pairs, target_start
from aigc.data.shards import read_manifest
from aigc.generate.sampling import SamplingParams
from aigc.tasks.images.sampler import PrefixSampler
from aigc.tasks.speech.audio import SAMPLE_RATE
from aigc.tasks.speech.evaluation import UNSEEN_TEXT, References
from aigc.tasks.speech.generator import SpeechGenerator, Utterance

from images import imagegpt, sample_hf, train_hf  # benchmarks/images.py: the same peer loop for prefix models
from loadwatch import LoadWatch  # benchmarks/loadwatch.py, beside this script

TARGET = 0.90  # adherence / ceiling
CHANCE = 1 / 35
PER_PROMPT = 2
WORDS = ["yes", "no", "up", "down", "left", "right", "seven", "eight"]


def run_recipe(run_dir: Path, minutes: float | None) -> float:
    """``aigc run speech``; the wall time of the whole pipeline."""
    extra = [f"train.max_minutes={minutes}"] if minutes else []
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "aigc", "run", "speech", f"run.dir={run_dir}", *extra],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"aigc run speech failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def throughput(say) -> tuple[float, float]:
    """Seconds of audio per second saying one word at a time (8 words), and 8 words in one batch."""
    started = time.perf_counter()
    one = sum(len(w) for word in WORDS for w in say([word]))
    alone = one / SAMPLE_RATE / (time.perf_counter() - started)
    started = time.perf_counter()
    batch = sum(len(w) for w in say(WORDS))
    return alone, batch / SAMPLE_RATE / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.3-minute training (a smoke run)")
    args = parser.parse_args()
    load = LoadWatch().start()
    with tempfile.TemporaryDirectory(prefix="aigc-speech-") as tmp:
        run_dir = Path(tmp) / "speech"
        pipeline_s = run_recipe(run_dir, 0.3 if args.quick else None)
        config = load_config("speech", [f"run.dir={run_dir}"] + (["train.max_minutes=0.3"] if args.quick else []))
        report = json.loads((run_dir / "eval" / "report.json").read_text())
        manifest = read_manifest(run_dir / "data")
        generator = SpeechGenerator.from_checkpoint(run_dir)  # the latest checkpoint, as aigc generate loads
        refs = References.of_run(config, manifest)
        params = SamplingParams(temperature=1.0, top_k=None, seed=config.seed)
        utterances = [Utterance(t, v, PER_PROMPT) for t, v in refs.prompts] + [Utterance(UNSEEN_TEXT, None, PER_PROMPT)]
        prefixes = [generator.encode(u.text, u.voice) for u in utterances for _ in range(u.n)]
        blank, length = [generator.eot] * generator.prefix, generator.frames * generator.levels

        def scored(codes: list[np.ndarray]) -> dict:
            waves = generator.waves(codes)
            groups = [waves[i * PER_PROMPT : (i + 1) * PER_PROMPT] for i in range(len(utterances))]
            return refs.score(groups[:-1], groups[-1])

        def ours(guidance: float) -> dict:
            return scored(generator.codes(utterances, params, guidance))

        def peer_codes(model, chunk: list[list[int]], guidance: float) -> list[np.ndarray]:
            drawn = sample_hf(model, chunk, blank, generator.first_audio, generator.levels * generator.book_size,
                              length, params, guidance)
            return [row.reshape(generator.frames, generator.levels) % generator.book_size for row in drawn]

        trained = max(json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines())
        rows = {"aigc": {"params": sum(p.numel() for p in generator.model.parameters()), "steps": trained,
                         1.0: ours(1.0), 2.0: ours(2.0)}}
        rows["aigc"]["speed"] = throughput(lambda words: [wave for group in generator.say(
            [Utterance(w, "m1") for w in words], params) for wave in group])

        sampler = PrefixSampler(split_pairs(run_dir / "data", manifest, "train"), target_start(manifest),
                                generator.prefix, config.train.batch_size, config.train.grad_accum, config.seed,
                                condition_dropout=config.train.condition_dropout)
        model = imagegpt(config, generator.model.config.vocab_size, generator.prefix + length)
        steps = train_hf(model, sampler, config, config.train.max_minutes * 60)
        rows["HF ImageGPT"] = {"params": sum(p.numel() for p in model.parameters()), "steps": steps,
                               **{g: scored(peer_codes(model, prefixes, g)) for g in (1.0, 2.0)}}
        rows["HF ImageGPT"]["speed"] = throughput(lambda words: generator.waves(peer_codes(
            model, [generator.encode(w, "m1") for w in words], 1.0)))

    ceiling = rows["aigc"][2.0]["classifier_real_accuracy"]
    print(f"\nspeech recipe: aigc run speech took {pipeline_s / 60:.1f} min (collect, prepare, "
          f"{config.train.max_minutes:g} min of training, evaluation); judge's ceiling on real clips {ceiling:.1%}\n")
    print("| model | params | steps | adherence g=1 | adherence g=2 | mel-cepstral distortion g=2 (real vs real) "
          "| duration error g=2 | audio s/s batch 1 | batch 8 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        g2 = row[2.0]
        print(f"| {name} | {row['params']:,} | {row['steps']:,} | {row[1.0]['adherence']:.1%} | {g2['adherence']:.1%} | "
              f"{g2['mel_cepstral_distortion']:.2f} ({g2['real_mel_cepstral_distortion']:.2f}) | "
              f"{g2['duration_error_s']:.3f} s | {row['speed'][0]:.1f} | {row['speed'][1]:.1f} |")
    print(f"\nboth rows: the last checkpoint (what aigc generate and aigc serve load). The run's own evaluation "
          f"(its best checkpoint by val loss, step {report['step']:,}; its generate settings, guidance "
          f"{report['guidance']:g}): adherence {report['adherence']:.1%}")
    learned = rows["HF ImageGPT"][1.0]["adherence"] >= 3 * CHANCE
    print("peer: " + ("learned (unguided adherence over three times chance): the comparison holds" if learned else
                      "did NOT learn (unguided adherence under three times chance): the comparison is void"))
    best = max(rows["aigc"][2.0]["adherence"], report["adherence"])
    print(f"target: adherence >= {TARGET:.0%} of the ceiling: {'met' if best >= TARGET * ceiling else 'MISSED'} "
          f"({best / ceiling:.1%} of {ceiling:.1%})")
    print(f"target: the pipeline within 10 minutes: {'met' if pipeline_s <= 600 else 'MISSED'} ({pipeline_s / 60:.1f} min)")
    print(load.verdict())


if __name__ == "__main__":
    main()
