"""The translate recipe end to end on a slice of Tatoeba, then `aigc generate` on the seq2seq run."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest
import torch

from aigc.data.pairs import PairSampler, split_pairs, target_start
from aigc.data.shards import read_manifest
from aigc.tasks import load_generator
from tests.conftest import FIXED_STEPS, fixture
from tests.e2e.helpers import Server, aigc

# the learning rate these step budgets were measured at: the recipe's (aigc tune's, for 5 minutes) is lower
STEP_BUDGET_LR = ["train.lr=0.003"]
TINY_SEQ2SEQ = [*FIXED_STEPS, *STEP_BUDGET_LR, "model.n_layer=2", "model.n_encoder_layer=2", "model.n_head=2",
                "model.n_embd=64", "tokenizer.vocab_size=1500", "train.max_steps=60", "train.batch_size=32", "train.eval_every=15",
                "train.checkpoint_every=30", "eval.max_pairs=40", "generate.beams=2"]


@pytest.fixture(scope="module")
def translate_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("translate") / "run"
    corpus = fixture("tatoeba_eng_cmn_slice.tsv")  # ~3,600 pairs, short and long
    done = aigc("run", "translate", f"data.paths=[{corpus}]", f"run.dir={run_dir}", *TINY_SEQ2SEQ)
    return run_dir, corpus, done


def _val_losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["val_loss"] for r in map(json.loads, lines) if "val_loss" in r}


def test_translate_recipe_end_to_end(translate_run):
    """The pipeline on real pairs. 60 steps teach the model the target side only (it writes the same line for every
    source, BLEU 0); whether translation is learnt is tested on the made-up pairs below."""
    run_dir, _, done = translate_run
    assert done.returncode == 0, done.stderr
    for path in ["data/train.src.bin", "data/test.tgt.bin", "checkpoints/latest/model.safetensors",
                 "eval/report.json", "eval/report.md", "samples/samples.txt"]:
        assert (run_dir / path).exists(), path
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert report["bleu_tokenize"] == "zh" and report["pairs"] == 40 and report["split"] == "test"
    assert report["sentences_per_s"] > 0
    val = _val_losses(run_dir)  # measured: 7.06 at step 15, 5.85 at step 60 (uniform over 1,500 tokens: 7.31)
    assert sorted(val) == [15, 30, 45, 60] and val[60] < val[15] - 0.6, val
    sample = report["samples"][0]
    assert set(sample) >= {"source", "reference", "translation"} and "attribution" not in sample["source"].lower()
    assert "| source |" in (run_dir / "eval" / "report.md").read_text().lower()
    assert "BLEU" in done.stdout


# A made-up language pair: subject, verb, object and a time word, the time word moved forward in the target. Its
# 630 sentences are few enough for a tiny model to learn to translate in 150 steps, which real pairs are not.
WORDS = {"I": "我", "you": "你", "he": "他", "she": "她", "we": "我们", "they": "他们", "love": "爱", "see": "看见",
         "like": "喜欢", "want": "想要", "eat": "吃", "tea": "茶", "rice": "米饭", "fish": "鱼", "cats": "猫", "dogs": "狗",
         "books": "书", "water": "水", "today": "今天", "often": "常常"}
SUBJECTS, VERBS = ["I", "you", "he", "she", "we", "they"], ["love", "see", "like", "want", "eat"]
OBJECTS, TIMES = ["tea", "rice", "fish", "cats", "dogs", "books", "water"], ["today", "often", ""]


@pytest.fixture(scope="module")
def made_up_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("made_up")
    lines = [f"{' '.join(filter(None, (s, v, o, t)))}.\t{WORDS[s]}{WORDS.get(t, '')}{WORDS[v]}{WORDS[o]}。"
             for s in SUBJECTS for v in VERBS for o in OBJECTS for t in TIMES]
    corpus = folder / "pairs.tsv"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run_dir = folder / "run"
    done = aigc("run", "translate", f"data.paths=[{corpus}]", f"run.dir={run_dir}", *FIXED_STEPS, *STEP_BUDGET_LR,
                "model.n_layer=2", "model.n_encoder_layer=2", "model.n_head=2", "model.n_embd=64", "tokenizer.vocab_size=300",
                "data.val_fraction=0.1", "data.test_fraction=0.1", "train.max_steps=150", "train.batch_size=32",
                "train.warmup_steps=10", "train.eval_every=50", "train.checkpoint_every=150", "generate.beams=1")
    assert done.returncode == 0, done.stderr
    return run_dir


@torch.inference_mode()
def _pair_loss(run_dir: Path, pairs) -> float:
    """The run's mean cross-entropy per target token on ``pairs`` (source ids, target ids), teacher-forced."""
    model = load_generator(run_dir).model.eval()
    sampler = PairSampler(pairs, target_start(read_manifest(run_dir / "data")), model.config.block_size, 1, 1, 0)
    total = count = 0.0
    for start in range(0, len(pairs), 32):
        (src, src_mask, tgt_in), tgt_out = sampler.collate(pairs[start : start + 32])
        logits = model(src, src_mask, tgt_in).float()
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=-1,
                                                   reduction="sum").item()
        count += int((tgt_out >= 0).sum())
    return total / count


def _translation(source: str) -> str:
    """The made-up language's translation of one of its English sentences."""
    words = source.rstrip(".").split()
    time = WORDS[words.pop()] if words[-1] in TIMES else ""
    return WORDS[words[0]] + time + "".join(WORDS[w] for w in words[1:]) + "。"


def test_the_model_learns_to_translate_from_the_source(made_up_run):
    """150 steps, seed 1337, the measured values in the messages: the loss falls, the true pairs score far better
    than mismatched ones, different sources get their own (mostly right) greedy translations, BLEU is high. A model
    that ignores its source scores true and mismatched pairs alike and writes one line for every source."""
    run_dir = made_up_run
    val = _val_losses(run_dir)
    assert val[150] < val[50] - 0.4, f"val loss {val}; measured 1.73 at step 50, 0.97 at 150 (label smoothing 0.1)"
    data = run_dir / "data"
    manifest = read_manifest(data)
    pairs = split_pairs(data, manifest, "val") + split_pairs(data, manifest, "test")
    true = _pair_loss(run_dir, pairs)
    mismatched = _pair_loss(run_dir, [(src, tgt) for (src, _), (_, tgt) in zip(pairs, pairs[1:] + pairs[:1])])
    assert true < 0.5 and mismatched > true + 0.7, f"loss {true:.3f} on true pairs, {mismatched:.3f} on mismatched; " \
                                                   "measured 0.159 and 1.477"
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    sources = [s["source"] for s in report["samples"]]
    greedy = aigc("generate", str(run_dir), "--temperature", "0", input_text="\n".join(sources) + "\n")
    assert greedy.returncode == 0, greedy.stderr
    outputs = greedy.stdout.rstrip("\n").split("\n")
    right = sum(out == _translation(src) for src, out in zip(sources, outputs))
    assert len(outputs) == len(sources) == 10 and len(set(outputs)) >= 8 and right >= 7, \
        f"{len(set(outputs))} different and {right} right of 10 greedy translations; measured 10 and 10: {outputs}"
    assert report["bleu"] > 60 and report["chrf"] > 60, \
        f"BLEU {report['bleu']:.1f}, chrF {report['chrf']:.1f}; measured 97.2 and 96.3"


def test_generate_translates_prompt_and_stdin_lines(translate_run):
    run_dir = translate_run[0]
    done = aigc("generate", str(run_dir), "--prompt", "I love you.", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and done.stdout.strip()
    piped = aigc("generate", str(run_dir), "--temperature", "0", input_text="I love you.\n\nHow are you?\n")
    assert piped.returncode == 0, piped.stderr
    out = piped.stdout.split("\n")
    assert out[0] == done.stdout.rstrip("\n") and out[1] == "" and len(out) == 4  # blank line in, blank line out
    nbest = aigc("generate", str(run_dir), "--prompt", "Thank you.", "--beams", "3", "--n", "2")
    assert nbest.returncode == 0 and len(nbest.stdout.rstrip("\n").split("\t")) == 2
    bad = aigc("generate", str(run_dir), "--prompt", "Thank you.", "--beams", "2", "--n", "3")
    assert bad.returncode == 2 and "n-best" in bad.stderr and "Traceback" not in bad.stderr


def test_a_tokenizer_per_side(translate_run, tmp_path):
    corpus = translate_run[1]
    run_dir = tmp_path / "separate"
    done = aigc("run", "translate", f"data.paths=[{corpus}]", f"run.dir={run_dir}", "tokenizer.separate=true",
                *TINY_SEQ2SEQ[:-2], "train.max_steps=20", "eval.max_pairs=10")
    assert done.returncode == 0, done.stderr
    assert (run_dir / "checkpoints" / "latest" / "target_tokenizer.json").is_file()
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert any("\u4e00" <= ch <= "\u9fff" for ch in report["samples"][0]["reference"])  # decoded by the target side
    translated = aigc("generate", str(run_dir), "--prompt", "I love you.", "--temperature", "0")
    assert translated.returncode == 0 and translated.stdout.count("\n") == 1


def test_serving_a_translation_run(translate_run):
    server = Server([translate_run[0]])
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        assert client.models.list().data[0].kind == "seq2seq"
        done = client.completions.create(model="run", prompt="I love you.", max_tokens=20, n=2)
        # the run's own settings, its beam search included: the 2 best hypotheses, as aigc generate gives
        expected = aigc("generate", str(translate_run[0]), "--prompt", "I love you.", "--max-new-tokens", "20",
                        "--n", "2").stdout
        assert "\t".join(c.text for c in done.choices) == expected.rstrip("\n") and done.usage.completion_tokens > 0
        with pytest.raises(openai.BadRequestError, match="n is at most .* beam search"):
            client.completions.create(model="run", prompt="I love you.", max_tokens=20, n=5)
        for field, value in [("stop", ["."]), ("logprobs", 1), ("echo", True)]:  # refused, no longer ignored
            with pytest.raises(openai.BadRequestError, match=f"'{field}' is not supported by translation models"):
                client.completions.create(model="run", prompt="I love you.", max_tokens=20, **{field: value})
        chat = client.chat.completions.create(model="run", messages=[{"role": "user", "content": "I love you."}],
                                              max_tokens=20, temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chat if c.choices) == done.choices[0].text
    finally:
        server.stop()
