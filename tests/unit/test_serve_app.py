"""The HTTP layer in process: a tiny untrained GPT behind the real app, scheduler and handlers.

Fast checks of the request schemas and their one mapping to SamplingParams, the limits, the errors,
and where work runs; the live server (signals, disconnects, the openai client) is tests/e2e/test_serve.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

from aigc.config import GenerateConfig, ModelConfig, section_class
from aigc.generate.sampling import SamplingParams
from aigc.generate.text import TextGenerator
from aigc.models import GPT
from aigc.serve.app import create_app
from aigc.serve.handlers import drawn
from aigc.serve.scheduler import Busy, Scheduler
from aigc.serve.schemas import ChatRequest, CompletionRequest, ImageRequest
from aigc.serve.settings import ServeSettings
from aigc.serve.workers import CompletionModel, InvalidRequest
from aigc.tasks.images.served import ImageJob, ImageModel, ImageWorker
from aigc.tokenizer import train_bpe, train_char

CORPUS = ["the quick brown fox jumps over the lazy dog\n", "hello world, hello there\n"] * 20
KEY = "unit-key"
DEFAULTS = GenerateConfig(max_new_tokens=5, temperature=0.7, top_k=9, repetition_penalty=1.1, stop=["zz"])
IMAGES_GENERATE = section_class("images", "generate")


@pytest.fixture(scope="module")
def generator() -> TextGenerator:
    torch.manual_seed(0)
    tokenizer = train_char(CORPUS, 100)
    config = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=tokenizer.get_vocab_size())
    return TextGenerator(GPT(config).eval(), tokenizer)


def app_for(generator: TextGenerator, **settings):
    """A started app around one GPT ("tiny"), its settings and its model; stop the worker when done."""
    settings = ServeSettings(**settings)
    worker = Scheduler(generator, max_running=settings.max_batch, max_waiting=settings.max_waiting)
    model = CompletionModel("tiny", generator, worker, DEFAULTS)
    worker.start()
    return create_app([model], settings), model


@pytest.fixture(scope="module")
def served(generator):
    app, model = app_for(generator, max_batch=4)
    with TestClient(app) as client:
        yield client, model
    model.worker.stop()


@pytest.fixture()
def client(served) -> TestClient:
    return served[0]


def test_sampling_fields_left_out_take_the_runs_defaults():
    body = CompletionRequest.model_validate({"model": "m", "prompt": "x"})
    assert body.sampling_params(DEFAULTS, 5) == SamplingParams(
        max_new_tokens=5, temperature=0.7, top_k=9, repetition_penalty=1.1, stop=("zz",), truncate_prompt=False)


def test_sampling_fields_sent_override_and_null_top_k_means_none():
    body = ChatRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_k": None,
                                       "temperature": None, "top_p": 0.5, "stop": "\n", "seed": 4})
    params = body.sampling_params(DEFAULTS, 3, ["\nUser:"], logprobs=True)
    assert (params.top_k, params.temperature, params.top_p, params.stop, params.seed, params.logprobs) == (
        None, 0.7, 0.5, ("\n", "\nUser:"), 4, True)  # an explicit null temperature is the default, as in OpenAI


def test_image_request_takes_the_runs_guidance_and_temperature():
    params, guidance = ImageRequest(prompt="a").sampling_params(IMAGES_GENERATE(guidance=2.0, temperature=0.9))
    assert (params.temperature, guidance) == (0.9, 2.0)
    params, guidance = ImageRequest(prompt="a", guidance=1, temperature=1, seed=3).sampling_params(IMAGES_GENERATE())
    assert (params.temperature, params.seed, guidance) == (1.0, 3, 1.0)


def post(client: TestClient, path: str, body: dict, **headers):
    return client.post(path, content=json.dumps(body).encode(), headers={"Content-Type": "application/json", **headers})


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"model": "tiny", "prompt": "the", "seed": 2**64}, "seed"),
    ("/v1/completions", {"model": "tiny", "prompt": "the", "seed": 2**63}, "seed"),
    ("/v1/completions", {"model": "tiny", "prompt": "the", "seed": -1}, "seed"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "seed": 2**64}, "seed"),
    ("/v1/images/generations", {"prompt": "a", "seed": 18446744073709551616}, "seed"),
    ("/v1/completions", {"model": "tiny", "prompt": "a\ud800b"}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": ["ok", "a\udfffb"]}, "prompt"),
    ("/v1/completions", {"model": "tiny\ud800", "prompt": "the"}, "model"),
    ("/v1/completions", {"model": "tiny", "prompt": "the", "stop": ["\ud800"]}, "stop"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "a\ud800"}]},
     "messages.0.content"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "\udc00"}]}]}, "messages.0.content"),
    ("/v1/chat/completions", {"model": "t\udc00", "messages": [{"role": "user", "content": "a"}]}, "model"),
    ("/v1/images/generations", {"prompt": "a\ud800"}, "prompt"),
    ("/v1/completions", {"model": "tiny", "prompt": "the", "repetition_penalty": 1e-40}, "repetition_penalty"),
])
def test_out_of_range_seeds_and_lone_surrogates_are_400_naming_the_field(client, path, body, param):
    response = post(client, path, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_valid_surrogate_pairs_and_the_largest_seed_are_fine(client):
    response = post(client, "/v1/completions", {"model": "tiny", "prompt": "the 😀", "seed": 2**63 - 1, "n": 2,
                                                "max_tokens": 3})
    assert response.status_code == 200, response.text


def test_prompts_are_tokenised_off_the_event_loop(served, monkeypatch):
    client, model = served
    on_loop = []
    encode = model.encode

    def watched(text, param):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return encode(text, param)

    monkeypatch.setattr(model, "encode", watched)
    assert post(client, "/v1/completions", {"model": "tiny", "prompt": ["the", "a"], "max_tokens": 2}).status_code == 200
    assert post(client, "/v1/chat/completions", {"model": "tiny", "max_tokens": 2,
                                                 "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    assert on_loop == [False, False, False]


def test_a_prompt_list_longer_than_the_queue_is_a_400_not_a_429(generator):
    app, model = app_for(generator, max_waiting=3)
    try:
        with TestClient(app) as client:
            response = post(client, "/v1/completions", {"model": "tiny", "prompt": ["a"] * 4, "max_tokens": 2})
            assert response.status_code == 400 and response.json()["error"]["param"] == "prompt", response.text
            assert post(client, "/v1/completions", {"model": "tiny", "prompt": ["a"] * 3, "max_tokens": 2}).status_code == 200
    finally:
        model.worker.stop()


def test_api_schema_and_docs_need_the_key_when_keys_are_set(generator):
    app, model = app_for(generator, api_keys=[KEY])
    try:
        with TestClient(app) as client:
            for path in ("/openapi.json", "/docs"):
                assert client.get(path).status_code == 401
                assert client.get(path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
            assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
    finally:
        model.worker.stop()


def test_models_list_their_kind_context_and_defaults(client):
    card = client.get("/v1/models").json()["data"][0]
    assert (card["id"], card["kind"], card["context"]) == ("tiny", "gpt", 32)
    assert card["defaults"] == DEFAULTS.model_dump()


def test_max_tokens_left_out_is_the_runs_default_within_the_context(client):
    short = post(client, "/v1/completions", {"model": "tiny", "prompt": "the", "ignore_eos": True, "stop": None})
    assert short.json()["usage"]["completion_tokens"] == DEFAULTS.max_new_tokens
    long_prompt = "the quick brown fox jumps over"  # 30 characters: 2 left in the context of 32
    near = post(client, "/v1/completions", {"model": "tiny", "prompt": long_prompt, "ignore_eos": True, "stop": None})
    assert near.status_code == 200 and near.json()["usage"]["completion_tokens"] == 2
    over = post(client, "/v1/completions", {"model": "tiny", "prompt": long_prompt, "max_tokens": 3})
    assert over.status_code == 400 and over.json()["error"]["code"] == "context_length_exceeded"


def metric(client: TestClient, name: str, labels: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{labels}}} "):
            return float(line.split()[-1])
    return 0.0


def test_timeouts_are_counted_as_timeout_not_length(generator):
    app, model = app_for(generator, timeout_s=1e-9)
    try:
        with TestClient(app) as client:
            response = post(client, "/v1/completions", {"model": "tiny", "prompt": "the", "max_tokens": 20,
                                                        "ignore_eos": True, "n": 2})
            assert response.status_code == 504, response.text
            assert metric(client, "aigc_finished_sequences_total", 'model="tiny",reason="timeout"') == 2
            assert metric(client, "aigc_finished_sequences_total", 'model="tiny",reason="length"') == 0
    finally:
        model.worker.stop()


class SlowImages:
    """An image generator whose drawings wait for ``release``: the first holds the worker, the next queue."""

    side = 4

    def __init__(self):
        self.release, self.started = threading.Event(), threading.Event()
        self.engine = type("Engine", (), {"block_size": 20})()

    def generate(self, prompts, n, params, guidance):
        self.started.set()
        self.release.wait(timeout=30)
        return [[np.zeros((self.side, self.side, 3), np.uint8)] * n for _ in prompts]


def _job(prompt: str, finished=lambda job: None) -> ImageJob:
    return ImageJob(prompt, 1, SamplingParams(), 1.0, finished)


def test_the_image_queue_is_bounded():
    images = SlowImages()
    worker = ImageWorker(images, max_waiting=1)
    worker.start()
    try:
        drawn = threading.Event()
        worker.submit(_job("a"))
        assert images.started.wait(timeout=30)
        worker.submit(_job("b", lambda job: drawn.set()))
        with pytest.raises(Busy) as refused:
            worker.submit(_job("c"))
        assert not refused.value.draining
        images.release.set()
        assert drawn.wait(timeout=30)
        assert (worker.running, worker.queued) == (0, 0)
    finally:
        worker.stop()


def test_a_draining_image_worker_draws_what_it_accepted_and_refuses_the_rest():
    images = SlowImages()
    worker = ImageWorker(images, max_waiting=8)
    worker.start()
    try:
        finished = []
        for prompt in "abc":
            worker.submit(_job(prompt, finished.append))
        assert images.started.wait(timeout=30)
        worker.draining = True  # the server got SIGTERM
        with pytest.raises(Busy) as refused:
            worker.submit(_job("d"))
        assert refused.value.draining
        images.release.set()
        deadline = time.monotonic() + 30
        while len(finished) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(job.prompt for job in finished) == ["a", "b", "c"] and all(job.images for job in finished)
    finally:
        worker.stop()


def test_a_full_image_queue_answers_429():
    images = SlowImages()
    model = ImageModel("pics", images, ImageWorker(images, max_waiting=0), IMAGES_GENERATE())
    images.release.set()
    with TestClient(create_app([model])) as client:
        response = post(client, "/v1/images/generations", {"prompt": "a"})
    assert response.status_code == 429 and response.json()["error"]["code"] == "queue_full"
    assert response.headers["retry-after"]


def test_image_requests_hold_no_server_thread_time_out_are_cancelled_and_counted(generator):
    """Ten image requests wait for a drawing that does not end: a text request still answers (the server's
    threads are free), they get 504 past --timeout and the nine still queued are never drawn, nor is one whose
    client went away; /metrics counts them all by how they ended."""
    images = SlowImages()
    pictures = ImageModel("pics", images, ImageWorker(images, max_waiting=32), IMAGES_GENERATE())
    text = CompletionModel("tiny", generator, Scheduler(generator, max_running=4), DEFAULTS)
    app = create_app([text, pictures], ServeSettings(timeout_s=1.0))
    for model in (text, pictures):
        model.worker.start()
    try:
        with TestClient(app) as client, ThreadPoolExecutor(12) as pool:
            waiting = [pool.submit(post, client, "/v1/images/generations", {"prompt": str(i), "model": "pics"})
                       for i in range(10)]
            assert images.started.wait(timeout=30)
            answer = post(client, "/v1/completions", {"model": "tiny", "prompt": "the", "max_tokens": 3})
            assert answer.status_code == 200, answer.text
            assert [w.result(timeout=30).status_code for w in waiting] == [504] * 10  # past the 1 s deadline

            async def gone() -> bool:
                return True

            served = app.state.handlers.served
            left = asyncio.run(drawn(served, pictures, lambda done: pictures.submit("x", 1, SamplingParams(), 1.0,
                                                                                   done), gone))
            assert left is None
            images.release.set()
            assert post(client, "/v1/images/generations", {"prompt": "y", "model": "pics"}).status_code == 200
            deadline = time.monotonic() + 30
            while pictures.worker.queued and time.monotonic() < deadline:
                time.sleep(0.05)
            assert pictures.worker.cancelled == 10  # the nine timed out and the one whose client left: not drawn
            metrics = client.get("/metrics").text
        assert 'aigc_finished_sequences_total{model="pics",reason="timeout"} 10.0' in metrics
        assert 'aigc_finished_sequences_total{model="pics",reason="cancelled"} 1.0' in metrics
        assert 'aigc_finished_sequences_total{model="pics",reason="stop"} 1.0' in metrics
    finally:
        for model in (text, pictures):
            model.worker.stop()


def test_image_sizes_belong_to_the_image_model():
    model = ImageModel("pics", SlowImages(), None, IMAGES_GENERATE())
    assert (model.image_scale(None), model.image_scale("4x4"), model.image_scale("32x32")) == (1, 1, 8)
    for size in ("5x5", "4x8", "2048x2048", "big"):
        with pytest.raises(InvalidRequest):
            model.image_scale(size)


def _reference_logprobs(model: CompletionModel, ids: list[int]) -> torch.Tensor:
    """log p(token t | tokens before it) by one plain forward pass, (L - 1,): what echo with logprobs must report."""
    with torch.no_grad():
        logprobs = model.generator.engine.model(torch.tensor([ids]))[0].float().log_softmax(-1)
    return logprobs[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_echo_with_logprobs_and_no_new_tokens_scores_every_prompt_token(served):
    client, model = served
    prompt = "the quick brown fox"
    body = post(client, "/v1/completions", {"model": "tiny", "prompt": prompt, "echo": True, "logprobs": 2,
                                            "max_tokens": 0}).json()
    choice, ids = body["choices"][0], model.encode(prompt, "prompt")
    logprobs = choice["logprobs"]
    assert choice["text"] == prompt and choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 0
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert logprobs["tokens"] == [model.token_text(t) for t in ids]
    assert logprobs["text_offset"] == [prompt.index(t, i) for i, t in enumerate(logprobs["tokens"])]
    assert torch.allclose(torch.tensor(logprobs["token_logprobs"][1:]), _reference_logprobs(model, ids), atol=1e-5)
    for token, tops in zip(logprobs["token_logprobs"][1:], logprobs["top_logprobs"][1:]):
        assert len(tops) == 2 and max(tops.values()) >= token - 1e-6


def test_token_id_prompts_as_lm_evaluation_harness_sends_them(served):
    """lm-eval's local-completions scores a continuation with ids, echo, logprobs=1 and max_tokens=1, then reads
    ``token_logprobs[ctxlen:-1]`` and whether each equals its top alternative (greedy)."""
    client, model = served
    ids = [model.encode("hello world", "prompt"), model.encode("the lazy dog", "prompt")]
    body = post(client, "/v1/completions", {"model": "tiny", "prompt": ids, "echo": True, "logprobs": 1,
                                            "max_tokens": 1, "temperature": 0, "seed": 1234}).json()
    for prompt, choice in zip(ids, body["choices"]):
        logprobs = choice["logprobs"]
        assert len(logprobs["token_logprobs"]) == len(prompt) + 1
        scored = torch.tensor(logprobs["token_logprobs"][1:len(prompt)])
        assert torch.allclose(scored, _reference_logprobs(model, prompt), atol=1e-5)
        greedy = max(logprobs["top_logprobs"][-1].values())  # the generated (greedy) token is its own top choice
        assert logprobs["token_logprobs"][-1] == pytest.approx(greedy)
        assert choice["text"].startswith(model.generator.decode(prompt))
    assert post(client, "/v1/completions", {"model": "tiny", "prompt": [[1, 10**6]]}).json()["error"]["param"] == "prompt"


@pytest.mark.parametrize("extra", [{"response_format": {"type": "text"}}, {"tool_choice": "none"}, {"tools": []},
                                   {"stop": [f"<{i}>" for i in range(16)]}])
def test_settings_that_ask_for_nothing_are_accepted(client, extra):
    messages = [{"role": "tool", "content": "4", "tool_call_id": "call_1"}, {"role": "user", "content": "?"}]
    response = post(client, "/v1/chat/completions", {"model": "tiny", "messages": messages, "max_tokens": 2, **extra})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("body, param", [
    ({"max_tokens": 0}, "max_tokens"),  # nothing to generate and nothing asked to score
    ({"echo": True, "stream": True}, "echo"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
     "response_format"),
    ({"structured_outputs": {"regex": "(unclosed"}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
])
def test_what_the_server_cannot_honour_is_a_400_naming_the_field(client, body, param):
    response = post(client, "/v1/completions", {"model": "tiny", "prompt": "the", **body})
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


class Reply(BaseModel):
    """What a constrained chat answer must be (a random model's free text would never be)."""

    mood: Literal["calm", "angry"]
    count: int = Field(ge=0, le=99)
    word: str = Field(max_length=6)


@pytest.fixture(scope="module")
def bytes_served():
    """A tiny untrained GPT over byte-level BPE (every byte a token, so any JSON can be written) behind the app."""
    torch.manual_seed(0)
    tokenizer = train_bpe(CORPUS, 300)
    config = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=128, vocab_size=tokenizer.get_vocab_size())
    app, model = app_for(TextGenerator(GPT(config).eval(), tokenizer), max_batch=8)
    with TestClient(app) as client:
        yield client
    model.worker.stop()


def test_a_json_schema_constrains_a_random_model_to_valid_json(bytes_served):
    schema = {"type": "json_schema", "json_schema": {"name": "reply", "schema": Reply.model_json_schema()}}
    body = post(bytes_served, "/v1/chat/completions", {
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "response_format": schema, "n": 4,
        "max_tokens": 60, "temperature": 1.0, "seed": 3}).json()
    for choice in body["choices"]:
        assert choice["finish_reason"] == "stop", choice
        Reply.model_validate_json(choice["message"]["content"])  # raises when it does not fit
    loose = post(bytes_served, "/v1/completions", {"model": "tiny", "prompt": "the", "max_tokens": 60, "seed": 1,
                                                   "response_format": {"type": "json_object"}}).json()["choices"][0]
    assert loose["finish_reason"] != "stop" or isinstance(json.loads(loose["text"]), dict)


@pytest.mark.parametrize("outputs, fits", [
    ({"regex": r"\d{3}-[a-z]{2,4}"}, lambda text: re.fullmatch(r"\d{3}-[a-z]{2,4}", text)),
    ({"choice": ["yes", "no", "not sure"]}, lambda text: text in ("yes", "no", "not sure")),
    ({"grammar": 'start: "(" INT ("+" INT)* ")"\n%import common.INT'},
     lambda text: re.fullmatch(r"\(\d+(\+\d+)*\)", text)),
])
def test_a_regex_a_choice_and_a_lark_grammar_constrain_completions(bytes_served, outputs, fits):
    body = post(bytes_served, "/v1/completions", {"model": "tiny", "prompt": "the", "max_tokens": 40, "n": 3,
                                                  "temperature": 1.0, "seed": 5, "structured_outputs": outputs}).json()
    for choice in body["choices"]:
        assert choice["finish_reason"] == "stop" and fits(choice["text"]), choice


def test_constrained_and_free_rows_share_a_batch_without_changing_each_other(bytes_served):
    free = {"model": "tiny", "prompt": "hello", "max_tokens": 30, "temperature": 1.0, "seed": 11, "ignore_eos": True}
    alone = post(bytes_served, "/v1/completions", free).json()["choices"][0]["text"]
    constrained = {**free, "seed": 12, "structured_outputs": {"choice": ["yes", "no"]}}
    bad = {**free, "structured_outputs": {"grammar": "start: undefined_rule"}}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda body: post(bytes_served, "/v1/completions", body),
                                [free, constrained, bad, constrained, free, bad]))
    assert [a.status_code for a in answers] == [200, 200, 400, 200, 200, 400]
    assert answers[0].json()["choices"][0]["text"] == answers[4].json()["choices"][0]["text"] == alone
    assert answers[1].json()["choices"][0]["text"] in ("yes", "no")


def test_a_grammar_the_vocabulary_cannot_write_ends_with_finish_reason_constraint(client):
    """The character model has never seen '{': no token can start a JSON object."""
    body = post(client, "/v1/completions", {"model": "tiny", "prompt": "the", "max_tokens": 5,
                                            "response_format": {"type": "json_object"}})
    assert body.status_code == 200 and body.json()["choices"][0]["finish_reason"] == "constraint", body.text


def test_tools_for_a_template_that_takes_none_are_a_400(client):
    """aigc's own chat template has no place for functions: the model could not know them."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    response = post(client, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "?"}],
                                                     "tools": [tool]})
    assert response.status_code == 400 and response.json()["error"]["code"] == "tools_unsupported", response.text


SCHEMAS = st.recursive(
    st.sampled_from([{"type": "string"}, {"type": "integer", "minimum": 5, "maximum": 1}, {"type": "strin"},
                     {"enum": []}, {"type": "number"}, {"pattern": "(("}, {"$ref": "#/nope"}, {"type": "null"}]),
    lambda inner: st.builds(lambda props, extra: {"type": "object", "properties": props,
                                                  "required": list(props), "additionalProperties": extra},
                            st.dictionaries(st.sampled_from("abc"), inner, max_size=2), st.booleans()),
    max_leaves=4)
CONSTRAINTS = st.one_of(
    st.builds(lambda s: {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}},
              SCHEMAS),
    st.builds(lambda r: {"structured_outputs": {"regex": r}}, st.text("ab()[]*+?|{}0-9,.^$\\", max_size=8)),
    st.builds(lambda c: {"structured_outputs": {"choice": c}}, st.lists(st.text("ab \\\"", max_size=3), max_size=3)),
    st.builds(lambda g: {"structured_outputs": {"grammar": g}}, st.text("start:\"ab|()\n /", max_size=12)),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(constraint=CONSTRAINTS)
def test_any_constrained_request_is_answered_or_refused_and_never_harms_its_batch(bytes_served, constraint):
    free = {"model": "tiny", "prompt": "hello", "max_tokens": 12, "temperature": 1.0, "seed": 7, "ignore_eos": True}
    alone = post(bytes_served, "/v1/completions", free).json()["choices"][0]["text"]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda body: post(bytes_served, "/v1/completions", body),
                                [free, {**free, "seed": 8, **constraint}, free]))
    assert answers[1].status_code in (200, 400), answers[1].text
    assert answers[0].json()["choices"][0]["text"] == answers[2].json()["choices"][0]["text"] == alone
