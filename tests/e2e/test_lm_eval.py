"""lm-evaluation-harness, a real client, against ``aigc serve``: the same tasks through its ``local-completions``
backend (token-id prompts, ``echo`` with ``logprobs``, six stop strings) and through its own Hugging Face
backend on the run's ``aigc export`` give the same accuracies, log-likelihoods within 1e-4, and the same greedy
generations. The tasks' data files are written by the test (nothing downloaded)."""

from __future__ import annotations

import json

import lm_eval
import pytest
from lm_eval.models.huggingface import HFLM
from lm_eval.models.openai_completions import LocalCompletionsAPI
from lm_eval.tasks import TaskManager

from aigc import prepare
from aigc.config import load_config
from aigc.training.loop import train
from tests.e2e.conftest import STEPS
from tests.e2e.helpers import Server, aigc

CHOICES = [
    {"question": "ROMEO:", "choices": [" I will", " xq zz", " the"], "answer": 0},
    {"question": "First Citizen:", "choices": [" Before we", " qqq", " you are"], "answer": 0},
    {"question": "KING", "choices": [" HENRY", " zzzz"], "answer": 0},
    {"question": "MENENIUS:", "choices": [" What", " kkkk"], "answer": 0},
]
CONTINUE = [{"prompt": "ROMEO:\n", "target": "I will"}, {"prompt": "First", "target": " Citizen"},
            {"prompt": "What is", "target": " the"}]
STOPS = ["\n\n", ".", "!", "?", ";"]  # lm-eval adds the end-of-text string: six for the server
GEN_TOKENS = 8


def _task(folder, name: str, rows: list[dict], body: str) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                         f"    test: {data}\ntest_split: test\n{body}", encoding="utf-8")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_corpus):
    """A tiny character-level run with plain sampling defaults (greedy equals Hugging Face's), and its export."""
    root = tmp_path_factory.mktemp("lm_eval")
    config = load_config("text", [f"data.paths=[{tiny_corpus}]", f"run.dir={root / 'run'}", "model.n_layer=1",
                                  "model.n_head=2", "model.n_embd=32", "model.block_size=64", "train.batch_size=8",
                                  f"generate.max_new_tokens={GEN_TOKENS}", *STEPS])
    prepare(config)
    train(config, log=lambda line: None)
    done = aigc("export", root / "run", root / "hf")
    assert done.returncode == 0, done.stderr
    return root


def test_lm_eval_scores_the_server_as_it_scores_the_exported_model(exported, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(exported / "hf_home"))
    tasks = exported / "tasks"
    tasks.mkdir(exist_ok=True)
    _task(tasks, "aigc_choice", CHOICES, 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\n'
          'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n')
    _task(tasks, "aigc_continue", CONTINUE, 'output_type: generate_until\ndoc_to_text: "{{prompt}}"\n'
          f'doc_to_target: "{{{{target}}}}"\ngeneration_kwargs:\n  until: {json.dumps(STOPS)}\n'
          f'  max_gen_toks: {GEN_TOKENS}\n  do_sample: false\n  temperature: 0\nmetric_list:\n'
          '  - metric: exact_match\n')
    manager, hf = TaskManager(include_path=str(tasks)), str(exported / "hf")
    server = Server([exported / "run"])
    try:
        served = LocalCompletionsAPI(base_url=f"{server.url}/v1/completions", model="run", tokenizer=hf,
                                     tokenizer_backend="huggingface", tokenized_requests=True, max_length=64,
                                     max_gen_toks=GEN_TOKENS, max_retries=1)
        results = {name: lm_eval.simple_evaluate(model=model, tasks=["aigc_choice", "aigc_continue"],
                                                 task_manager=manager, log_samples=True)
                   for name, model in [("served", served), ("hf", HFLM(pretrained=hf, device="cpu", batch_size=1,
                                                                         dtype="float32"))]}
    finally:
        server.stop()
    ours, theirs = results["served"], results["hf"]
    assert ours["results"]["aigc_choice"]["acc,none"] == theirs["results"]["aigc_choice"]["acc,none"]
    assert ours["results"]["aigc_continue"]["exact_match,none"] == theirs["results"]["aigc_continue"]["exact_match,none"]
    scored = [(a, b) for mine, hers in zip(ours["samples"]["aigc_choice"], theirs["samples"]["aigc_choice"])
              for a, b in zip(mine["resps"], hers["resps"])]
    assert len(scored) == sum(len(row["choices"]) for row in CHOICES)
    for (mine,), (hers,) in scored:
        assert mine[0] == pytest.approx(hers[0], abs=1e-4) and mine[1] == hers[1], (mine, hers)
    generated = [(mine["resps"], hers["resps"]) for mine, hers in zip(ours["samples"]["aigc_continue"],
                                                                      theirs["samples"]["aigc_continue"])]
    assert all(mine == hers for mine, hers in generated), generated
