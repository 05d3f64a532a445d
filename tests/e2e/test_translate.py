"""The translate recipe end to end on a slice of Tatoeba, then `aigc generate` on the seq2seq run."""

from __future__ import annotations

import json

import openai
import pytest

from tests.conftest import shared
from tests.e2e.test_run import aigc
from tests.e2e.test_serve import Server

TINY_SEQ2SEQ = ["model.n_layer=2", "model.n_encoder_layer=2", "model.n_head=2", "model.n_embd=64",
                "tokenizer.vocab_size=1500", "train.max_steps=60", "train.batch_size=32", "train.eval_every=30",
                "train.checkpoint_every=30", "eval.max_pairs=40", "generate.beams=2"]


@pytest.fixture(scope="module")
def translate_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("translate")
    lines = shared("tatoeba_eng_cmn.tsv").read_text(encoding="utf-8-sig").splitlines()
    corpus = folder / "slice.tsv"
    corpus.write_text("\n".join(lines[::8]) + "\n", encoding="utf-8")  # ~3,600 pairs, short and long
    run_dir = folder / "run"
    done = aigc("run", "translate", f"data.paths=[{corpus}]", f"run.dir={run_dir}", *TINY_SEQ2SEQ)
    return run_dir, corpus, done


def test_translate_recipe_end_to_end(translate_run):
    run_dir, _, done = translate_run
    assert done.returncode == 0, done.stderr
    for path in ["data/train.src.bin", "data/test.tgt.bin", "checkpoints/latest/model.safetensors",
                 "eval/report.json", "eval/report.md", "samples/samples.txt"]:
        assert (run_dir / path).exists(), path
    report = json.loads((run_dir / "eval" / "report.json").read_text())
    assert report["bleu_tokenize"] == "zh" and report["pairs"] == 40 and report["split"] == "test"
    assert 0 <= report["bleu"] <= 100 and 0 < report["chrf"] <= 100 and report["sentences_per_s"] > 0
    sample = report["samples"][0]
    assert set(sample) >= {"source", "reference", "translation"} and "attribution" not in sample["source"].lower()
    assert "| source |" in (run_dir / "eval" / "report.md").read_text().lower()
    assert "BLEU" in done.stdout


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
        done = client.completions.create(model="run", prompt="I love you.", max_tokens=20, temperature=0)
        expected = aigc("generate", str(translate_run[0]), "--prompt", "I love you.", "--temperature", "0",
                        "--max-new-tokens", "20", "--beams", "1").stdout  # the API has no beam search
        assert done.choices[0].text == expected.rstrip("\n") and done.usage.completion_tokens > 0
        chat = client.chat.completions.create(model="run", messages=[{"role": "user", "content": "I love you."}],
                                              max_tokens=20, temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chat if c.choices) == done.choices[0].text
    finally:
        server.stop()
