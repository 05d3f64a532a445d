"""Before/after check for refactors: the same seeds give the same losses, texts, images and HTTP bodies.

Three tiny runs (text, translation pairs, digits) are trained from data made here, then driven through
``aigc generate`` and ``aigc serve`` with fixed seeds. Every observable result is compared with
``tests/golden/behaviour.json``, recorded at commit 11afe60 (before the architecture issue's refactor). Sampling settings are given
explicitly everywhere, since the defaults now travel with each run. Changed on purpose since: ``http_translate``
(the server now translates with the run's beam search, ``generate.beams=4``, as ``aigc generate`` does, and is
checked against it: ``translate_defaults``).
Regenerate only for an intended change of behaviour: ``AIGC_WRITE_GOLDEN=1 pytest tests/e2e/test_behaviour_unchanged.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import Server, aigc

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "behaviour.json"
WORDS = "the a king queen of and to my lord good night day sweet love come go here there now why".split()
TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.dropout=0", "train.max_minutes=null",
        "train.schedule=steps", "train.max_steps=30", "train.warmup_steps=5", "train.batch_size=8", "train.eval_every=15",
        "train.eval_batches=2", "train.checkpoint_every=30", "train.threads=1"]
# the text and translate recipes' learning rates when the outputs were recorded (aigc tune has retuned them since)
TEXT_RECORDED = ["train.lr=0.002"]
PAIRS_RECORDED = ["train.lr=0.003"]
SAMPLED = ["--seed", "5", "--temperature", "0.9", "--top-k", "12", "--max-new-tokens", "24"]


def _corpus(rng: random.Random, lines: int) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) for _ in range(lines)]


def _losses(run_dir: Path) -> list[list[float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [[r["step"], r.get("loss", r.get("val_loss"))] for r in rows]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _run(*args: str) -> str:
    done = aigc(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _observe(root: Path) -> dict:
    rng = random.Random(0)
    text = root / "text.txt"
    text.write_text("\n\n".join(_corpus(rng, 400)), encoding="utf-8")
    pairs = root / "pairs.tsv"
    pairs.write_text("".join(f"{s}\t{' '.join(reversed(s.split()))}\n" for s in _corpus(rng, 600)), encoding="utf-8")
    runs = {"text": root / "text", "pairs": root / "pairs", "digits": root / "digits"}
    text_run = [f"data.paths=[{text}]", f"run.dir={runs['text']}", "model.block_size=64", *TEXT_RECORDED, *TINY]
    _run("prepare", "text", *text_run)
    _run("train", "text", *text_run)
    pair_args = ["translate", f"data.paths=[{pairs}]", f"run.dir={runs['pairs']}", "tokenizer.vocab_size=300",
                 "model.n_encoder_layer=2", "model.block_size=32", *PAIRS_RECORDED, *TINY]
    _run("prepare", *pair_args)
    _run("train", *pair_args)
    digit_args = ["digits", f"run.dir={runs['digits']}", "model.block_size=96", *TINY]
    _run("prepare", *digit_args)
    _run("train", *digit_args)

    seen: dict = {"losses": {name: _losses(path) for name, path in runs.items()}}
    seen["generate_text"] = _run("generate", str(runs["text"]), "--prompt", "the king", "--n", "2", *SAMPLED)
    seen["generate_text_greedy"] = _run("generate", str(runs["text"]), "--prompt", "my lord", "--temperature", "0",
                                        "--max-new-tokens", "30")
    seen["generate_text_penalties"] = _run("generate", str(runs["text"]), "--prompt", "good", "--repetition-penalty",
                                           "1.3", "--presence-penalty", "0.5", "--frequency-penalty", "0.4",
                                           "--top-p", "0.9", *SAMPLED)
    seen["translate_greedy"] = _run("generate", str(runs["pairs"]), "--prompt", "the king of night", "--temperature", "0",
                                    "--beams", "1", "--max-new-tokens", "200")
    seen["translate_sampled"] = _run("generate", str(runs["pairs"]), "--prompt", "sweet love come", "--n", "2", "--beams",
                                     "1", *SAMPLED)
    seen["translate_beam"] = _run("generate", str(runs["pairs"]), "--prompt", "go here now", "--beams", "3", "--n", "2",
                                  "--max-new-tokens", "200")
    seen["translate_defaults"] = _run("generate", str(runs["pairs"]), "--prompt", "a king", "--n", "2")  # beams 4
    folder = root / "drawn"
    _run("generate", str(runs["digits"]), "--prompt", "the digit three", "--n", "3", "--seed", "1", "--guidance", "2",
         "--temperature", "1", "--out", f"{folder}/")
    seen["images"] = [_sha(p.read_bytes()) for p in sorted(folder.glob("*.png"))]

    server = Server([runs["text"], runs["pairs"], runs["digits"]])
    try:
        def post(path: str, body: dict) -> dict:
            answer = httpx.post(f"{server.url}{path}", json=body, timeout=60).json()
            for key in ("id", "created"):
                answer.pop(key, None)
            return answer

        seen["http_completion"] = post("/v1/completions", {"model": "text", "prompt": ["the queen", "why"], "seed": 3,
                                                           "max_tokens": 20, "n": 2, "logprobs": 2, "top_k": 8,
                                                           "temperature": 1.0})
        seen["http_chat"] = post("/v1/chat/completions", {"model": "text", "seed": 4, "max_tokens": 16,
                                                          "temperature": 1.0, "top_k": None,
                                                          "messages": [{"role": "user", "content": "good day"}]})
        stream = httpx.post(f"{server.url}/v1/completions", timeout=60, json={
            "model": "text", "prompt": "come", "seed": 9, "max_tokens": 20, "stream": True, "temperature": 0.7,
            "top_k": None})
        chunks = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")]
        seen["http_stream"] = [[c["choices"][0]["text"], c["choices"][0]["finish_reason"]] for c in chunks]
        seen["http_translate"] = post("/v1/chat/completions", {"model": "pairs", "seed": 2, "temperature": 0, "n": 2,
                                                               "messages": [{"role": "user", "content": "a king"}]})
        drawn = post("/v1/images/generations", {"model": "digits", "prompt": "the digit one", "n": 2, "seed": 6,
                                                "guidance": 2})
        seen["http_images"] = [_sha(base64.b64decode(d["b64_json"])) for d in drawn["data"]]
    finally:
        server.stop()
    return seen


def _rounded(value):
    """Floats to 5 decimals (losses, logprobs): equal up to the last bits of a float sum."""
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _mismatches(seen, recorded, where: str) -> list[str]:
    """Where ``seen`` differs from ``recorded``: texts, hashes and integers exactly, floats within 1e-4.

    The server batches rows as they arrive, so on a loaded machine the same row may be computed in a batch of another
    size, which changes a float sum in its last bits (seen in CI: a logprob of -2.446315 rounded both ways).
    """
    if isinstance(recorded, float) and isinstance(seen, (int, float)):
        return [] if abs(seen - recorded) <= 1e-4 else [f"{where}: {seen} != {recorded}"]
    if isinstance(recorded, dict) and isinstance(seen, dict) and seen.keys() == recorded.keys():
        return [m for key in recorded for m in _mismatches(seen[key], recorded[key], f"{where}.{key}")]
    if isinstance(recorded, list) and isinstance(seen, list) and len(seen) == len(recorded):
        return [m for i, (s, r) in enumerate(zip(seen, recorded)) for m in _mismatches(s, r, f"{where}[{i}]")]
    return [] if seen == recorded else [f"{where}: {seen!r} != {recorded!r}"]


def test_same_seeds_give_the_recorded_outputs(tmp_path):
    seen = _rounded(_observe(tmp_path))
    if os.environ.get("AIGC_WRITE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(seen, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        pytest.skip(f"wrote {GOLDEN}")
    # the server answers a translate run with the run's own settings, its beam search included, as aigc generate does
    served = [choice["message"]["content"] for choice in seen["http_translate"]["choices"]]
    assert "\t".join(served) + "\n" == seen["translate_defaults"]
    recorded = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert not (wrong := _mismatches(seen, recorded, "outputs")), "\n".join(wrong)
