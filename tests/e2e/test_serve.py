"""`aigc serve` as a user runs it: a live server on a random localhost port, driven by the official
`openai` client, plain HTTP, and signals. The model is a tiny character GPT trained by the fixture."""

from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import hypothesis
import openai
import pytest
import requests
import schemathesis
from schemathesis.generation import GenerationMode

from tests.conftest import FIXED_STEPS, fixture
from tests.e2e.helpers import Server, aigc, free_port

KEY = "test-key-123"
ORIGIN = "http://allowed.example"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve")
    corpus = folder / "slice.txt"
    corpus.write_text(fixture("tinyshakespeare_head.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    run_dir = folder / "code"  # served as model "code", the id the docs use
    done = aigc("run", "text", f"data.paths=[{corpus}]", f"run.dir={run_dir}", "tokenizer.kind=char", "model.n_layer=2",
                "model.n_head=2", "model.n_embd=32", "model.block_size=1024", "train.max_steps=20", "train.batch_size=2",
                "train.eval_every=20", "train.lr=0.002", "train.warmup_steps=50",  # its own: the tests read its samples
                "train.checkpoint_every=20", "eval.samples=1", "generate.max_new_tokens=4", "eval.max_tokens=4096",
                *FIXED_STEPS)
    assert done.returncode == 0, done.stderr
    return run_dir


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    """The module's server: keys from a flag, a key file and AIGC_API_KEY (the flag's is the one the tests send)."""
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text("file-key-1\n\n  file-key-2  \n", encoding="utf-8")
    server = Server([tiny_run], "--api-key", KEY, "--api-key-file", str(keys), "--cors-origin", ORIGIN, "--max-batch",
                    "8", "--ping-interval", "0.2", "--max-body-bytes", "20000", env={"AIGC_API_KEY": "env-key"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0)


def test_models_and_completion_with_the_openai_client(client):
    assert [m.id for m in client.models.list().data] == ["code"]
    done = client.completions.create(model="code", prompt="ROMEO:", max_tokens=12, seed=3, logprobs=2)
    choice = done.choices[0]
    assert choice.finish_reason in ("stop", "length") and len(choice.logprobs.tokens) == done.usage.completion_tokens
    assert done.usage.prompt_tokens == 6 and done.usage.total_tokens == 6 + done.usage.completion_tokens
    assert all(len(top) == 2 for top in choice.logprobs.top_logprobs)
    joined = "".join(choice.logprobs.tokens)  # an end-of-text stop is a token with no text
    assert joined == choice.text or (choice.finish_reason == "stop" and joined == choice.text + "<|endoftext|>")
    # the prompt scored, as lm-evaluation-harness asks (its tokens' values are checked in unit/test_serve_app.py)
    scored = client.completions.create(model="code", prompt="ROMEO:", max_tokens=0, echo=True, logprobs=1).choices[0]
    assert scored.text == "ROMEO:" and scored.logprobs.token_logprobs[0] is None
    assert len(scored.logprobs.token_logprobs) == 6 and all(lp < 0 for lp in scored.logprobs.token_logprobs[1:])


def test_streamed_equals_unstreamed_for_a_seed(client):
    whole = client.completions.create(model="code", prompt="First", max_tokens=40, seed=7, temperature=1.0)
    chunks = list(client.completions.create(model="code", prompt="First", max_tokens=40, seed=7, temperature=1.0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_streamed_and_not(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    whole = client.chat.completions.create(model="code", messages=messages, max_tokens=20, seed=1, n=2,
                                           logprobs=True, top_logprobs=3)
    assert len(whole.choices) == 2 and whole.choices[0].message.role == "assistant"
    assert len(whole.choices[0].logprobs.content[0].top_logprobs) == 3
    stream = list(client.chat.completions.create(model="code", messages=messages, max_tokens=20, seed=1, n=2, stream=True))
    assert stream[0].choices[0].delta.role == "assistant"
    for index in range(2):
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices and c.choices[0].index == index)
        assert text == whole.choices[index].message.content


def test_concurrent_streams_do_not_mix(client):
    expected = {seed: client.completions.create(model="code", prompt="KING", max_tokens=60, seed=seed).choices[0].text
                for seed in range(6)}

    def streamed(seed: int) -> str:
        chunks = client.completions.create(model="code", prompt="KING", max_tokens=60, seed=seed, stream=True)
        return "".join(c.choices[0].text for c in chunks)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = dict(zip(expected, pool.map(streamed, expected)))
    assert got == expected and len(set(got.values())) > 1


def test_disconnect_frees_the_slot(server):
    before = server.metric("aigc_cancelled_sequences")
    finished_before = server.metric("aigc_finished_sequences_total", reason="cancelled")
    body = {"model": "code", "prompt": "A", "max_tokens": 1000, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                break  # first token arrived: hang up
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (server.metric("aigc_requests_running") or
                                           server.metric("aigc_cancelled_sequences") == before):
        time.sleep(0.05)
    assert server.metric("aigc_requests_running") == 0
    assert server.metric("aigc_cancelled_sequences") == before + 1
    assert server.metric("aigc_finished_sequences_total", reason="cancelled") == finished_before + 1


def wait_for(condition, seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_plain_requests_are_cancelled_when_their_clients_give_up(server):
    """Ten clients give up after 50 ms on 4 choices of 1000 tokens: all 40 sequences stop, queued or running."""
    cancelled = server.metric("aigc_cancelled_sequences")
    finished = server.metric("aigc_finished_sequences_total", reason="cancelled")
    generated = server.metric("aigc_generation_tokens_total")
    body = {"model": "code", "prompt": "A", "max_tokens": 1000, "n": 4, "ignore_eos": True}

    def give_up(_) -> bool:
        try:
            httpx.post(f"{server.url}/v1/completions", json=body, headers=server.headers, timeout=0.05)
        except httpx.TimeoutException:
            return True
        return False

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        assert all(pool.map(give_up, range(10)))
    assert wait_for(lambda: server.metric("aigc_cancelled_sequences") == cancelled + 40)
    assert wait_for(lambda: server.metric("aigc_requests_running") + server.metric("aigc_requests_waiting") == 0)
    assert server.metric("aigc_finished_sequences_total", reason="cancelled") == finished + 40
    assert server.metric("aigc_generation_tokens_total") - generated < 40 * 1000


EXTREME = [{"temperature": 1e-40}, {"temperature": 1e-40, "repetition_penalty": 1e-40}, {"repetition_penalty": 1e-40},
           {"repetition_penalty": 0.01}, {"repetition_penalty": 100}, {"top_p": 1e-300}, {"min_p": 0.999999},
           {"temperature": 2, "presence_penalty": -2, "frequency_penalty": -2, "top_k": 1}]


def test_extreme_sampling_values_are_answered_alone(server):
    """Values that used to NaN the probabilities get a 200 or a 400, and a stream in the same batch goes on."""
    body = {"model": "code", "prompt": "A", "max_tokens": 400, "stream": True, "ignore_eos": True, "seed": 1}
    lines, statuses = [], []
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, headers=server.headers, timeout=60) as stream:
        for line in filter(None, stream.iter_lines()):
            lines.append(line)
            if len(lines) == 1:  # the stream is running: the others join its batch
                with concurrent.futures.ThreadPoolExecutor(len(EXTREME)) as pool:
                    statuses = list(pool.map(lambda extra: post(server, "/v1/completions", {
                        "model": "code", "prompt": "ROMEO:", "max_tokens": 30, "n": 2, **extra}).status_code, EXTREME))
    assert all(status in (200, 400) for status in statuses), statuses
    assert lines[-1] == "data: [DONE]" and not any('"error"' in line for line in lines)
    finals = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert finals[-1]["choices"][0]["finish_reason"] == "length"


def post(server, path: str, body, headers: dict | None = None, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=30)


MALFORMED = [
    ("/v1/completions", None, b"{not json", 400, "invalid_json"),
    ("/v1/completions", {"prompt": "x"}, None, 400, None),  # no model
    ("/v1/completions", {"model": "code"}, None, 400, None),  # no prompt
    ("/v1/completions", {"model": "nope", "prompt": "x"}, None, 404, "model_not_found"),
    ("/v1/completions", {"model": "code", "prompt": ""}, None, 400, None),
    ("/v1/completions", {"model": "code", "prompt": "x", "max_tokens": 0}, None, 400, None),
    ("/v1/completions", {"model": "code", "prompt": "x", "temperature": 3}, None, 400, None),
    ("/v1/completions", {"model": "code", "prompt": "x", "top_p": 0}, None, 400, None),
    ("/v1/completions", {"model": "code", "prompt": "x", "stop": [str(i) for i in range(17)]}, None, 400, None),
    ("/v1/completions", {"model": "code", "prompt": "x", "n": 99}, None, 400, None),
    ("/v1/completions", {"model": "code", "prompt": "x", "echo": True, "stream": True}, None, 400, None),
    ("/v1/completions", {"model": "code", "prompt": "x", "logit_bias": {"1": 5}}, None, 400, "unsupported_parameter"),
    ("/v1/completions", {"model": "code", "prompt": "x" * 1100}, None, 400, "context_length_exceeded"),
    ("/v1/completions", {"model": "code", "prompt": "x" * 1000, "max_tokens": 100}, None, 400, "context_length_exceeded"),
    ("/v1/completions", {"model": "code", "prompt": "x" * 30000}, None, 413, None),
    ("/v1/chat/completions", {"model": "code", "messages": []}, None, 400, None),
    ("/v1/chat/completions", {"model": "code", "messages": [{"role": "wizard", "content": "x"}]}, None, 400, None),
    ("/v1/chat/completions", {"model": "code", "messages": "hello"}, None, 400, None),
    ("/v1/chat/completions", {"model": "code", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}, None, 400,
     None),  # a tool without its function
    ("/v1/chat/completions", {"model": "code", "messages": [{"role": "user", "content": "x"}], "functions": [{}]}, None,
     400, "unsupported_parameter"),
    ("/v1/images/generations", {"prompt": "a red circle", "model": "code"}, None, 400, "not_an_image_model"),
    ("/v1/completions", {"model": "code", "prompt": "x", "seed": 18446744073709551616}, None, 400, "invalid_value"),
    ("/v1/completions", None, b'{"model": "code", "prompt": "a\\ud800b"}', 400, "invalid_value"),
    ("/v1/chat/completions", None, b'{"model": "code", "messages": [{"role": "user", "content": "\\udc00"}]}', 400,
     "invalid_value"),
    ("/v1/completions", None, b'{"model": "c\\ud800", "prompt": "x"}', 400, "invalid_value"),
    ("/v1/nothing", {}, None, 404, None),
]


@pytest.mark.parametrize("path, body, raw, status, code", MALFORMED)
def test_malformed_requests_get_the_expected_4xx(server, path, body, raw, status, code):
    response = post(server, path, body, raw=raw)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and set(error) == {"message", "type", "param", "code"}
    if code:
        assert error["code"] == code
    assert response.headers["x-request-id"]


def test_ignored_fields_still_work(server):
    response = post(server, "/v1/completions", {"model": "code", "prompt": "x", "max_tokens": 2, "seed": 1,
                                                "user": "u1", "some_future_field": 1})
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] >= 1


def test_auth_cors_health_and_request_ids(server):
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    wrong = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "authentication_error"
    for key in (KEY, "env-key", "file-key-1", "file-key-2"):  # the flag's, the environment's and the key file's
        assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Bearer file-key-3"}).status_code == 401
    assert httpx.get(f"{server.url}/health").status_code == 200 and httpx.get(f"{server.url}/").status_code == 200
    assert httpx.get(f"{server.url}/metrics").status_code == 401 and httpx.get(f"{server.url}/ready").status_code == 401
    for path in ("/docs", "/openapi.json"):  # only /health and / are open
        assert httpx.get(f"{server.url}{path}").status_code == 401
        assert httpx.get(f"{server.url}{path}", headers=server.headers).status_code == 200
    metrics = httpx.get(f"{server.url}/metrics", headers=server.headers)
    assert metrics.status_code == 200 and re.search(r'^aigc_requests_running\{model="code"\} 0\.0$', metrics.text, re.M)
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = httpx.options(f"{server.url}/v1/completions", headers=preflight)
    assert allowed.headers.get("access-control-allow-origin") == ORIGIN
    other = httpx.options(f"{server.url}/v1/completions", headers={**preflight, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    echoed = httpx.get(f"{server.url}/health", headers={"X-Request-Id": "abc-1"})
    assert echoed.headers["x-request-id"] == "abc-1"


COUNTED = {"prompt": ("aigc_prompt_tokens_total", {}), "generated": ("aigc_generation_tokens_total", {}),
           "length": ("aigc_finished_sequences_total", {"reason": "length"}),
           "stop": ("aigc_finished_sequences_total", {"reason": "stop"}),
           "requests": ("aigc_request_latency_seconds_count", {}),
           "first_tokens": ("aigc_time_to_first_token_seconds_count", {}),
           "gaps": ("aigc_inter_token_latency_seconds_count", {})}


def test_metrics_move_by_exactly_the_requests_sent(server, client):
    """Three requests, five choices of five tokens: each counter moves by what they did, and nothing stays running."""
    def counts() -> dict[str, float]:
        return {key: server.metric(name, **labels) for key, (name, labels) in COUNTED.items()}

    before = counts()
    done = [client.completions.create(model="code", prompt="ROMEO:", max_tokens=5, seed=1,
                                      extra_body={"ignore_eos": True}),
            client.completions.create(model="code", prompt="KING", max_tokens=5, seed=2, n=2,
                                      extra_body={"ignore_eos": True}),
            client.chat.completions.create(model="code", messages=[{"role": "user", "content": "Hello"}], max_tokens=5,
                                           seed=3, n=2, extra_body={"ignore_eos": True})]
    after = counts()
    moved = {key: after[key] - before[key] for key in COUNTED}
    assert [d.usage.completion_tokens for d in done] == [5, 10, 10]
    assert moved == {"prompt": sum(d.usage.prompt_tokens for d in done), "generated": 25, "length": 5, "stop": 0,
                     "requests": 3, "first_tokens": 3, "gaps": 25 - 3}, moved  # a gap between two tokens of a request
    assert server.metric("aigc_requests_running") == 0 and server.metric("aigc_requests_waiting") == 0


def test_sigterm_drains_running_requests(tiny_run):
    server = Server([tiny_run], "--drain-timeout", "30")
    body = {"model": "code", "prompt": "A", "max_tokens": 600, "stream": True, "ignore_eos": True, "seed": 1}
    lines = []
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=60) as response:
        for line in filter(None, response.iter_lines()):
            lines.append(line)
            if len(lines) == 1:
                server.process.send_signal(signal.SIGTERM)
                time.sleep(0.2)
                refused = httpx.post(f"{server.url}/v1/completions", json={"model": "code", "prompt": "x"})
                ready = httpx.get(f"{server.url}/ready")
    assert refused.status_code == 503 and refused.headers["retry-after"]
    assert ready.status_code == 503
    assert lines[-1] == "data: [DONE]"
    finals = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert finals[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert server.process.wait(timeout=30) == -signal.SIGTERM  # exits by the signal after the drain, as uvicorn does


def post_in_background(server: Server, bodies: list[dict]) -> tuple[concurrent.futures.ThreadPoolExecutor, list]:
    """POST each body from its own thread; the futures give a status code, or the exception of a dropped connection."""
    def send(body: dict) -> int | Exception:
        try:
            return httpx.post(f"{server.url}/v1/completions", json=body, headers=server.headers, timeout=120).status_code
        except httpx.HTTPError as err:
            return err

    pool = concurrent.futures.ThreadPoolExecutor(len(bodies))
    return pool, [pool.submit(send, body) for body in bodies]


LONG = {"model": "code", "prompt": "A", "max_tokens": 1000, "ignore_eos": True}


def test_a_second_signal_exits_at_once(tiny_run):
    """Draining waits for running and queued requests; a second SIGTERM does not wait for them."""
    server = Server([tiny_run], "--max-batch", "1", "--drain-timeout", "300")
    pool, futures = post_in_background(server, [LONG] * 8)
    assert wait_for(lambda: server.metric("aigc_requests_waiting") >= 6)
    server.process.send_signal(signal.SIGTERM)
    assert wait_for(lambda: httpx.get(f"{server.url}/ready").status_code == 503)
    server.process.send_signal(signal.SIGTERM)
    try:
        assert server.process.wait(timeout=60) == -signal.SIGTERM
    finally:
        server.stop()
    results = [f.result() for f in futures]
    pool.shutdown()
    assert not all(result == 200 for result in results), results  # the queued ones were not waited for


def test_requests_unfinished_when_the_drain_time_ends_get_503(tiny_run):
    server = Server([tiny_run], "--max-batch", "1", "--drain-timeout", "1")
    pool, futures = post_in_background(server, [LONG] * 8)
    assert wait_for(lambda: server.metric("aigc_requests_waiting") >= 6)
    server.process.send_signal(signal.SIGTERM)
    try:
        assert server.process.wait(timeout=60) == -signal.SIGTERM
    finally:
        server.stop()
    results = [f.result() for f in futures]
    pool.shutdown()
    assert all(result in (200, 503) for result in results), results  # never a dropped connection
    assert 503 in results


def test_serve_bad_input_is_a_clear_error(tmp_path):
    done = aigc("serve", tmp_path, "--port", free_port())  # not 8000: docs/troubleshooting.md's test holds it
    assert done.returncode == 2 and "is not a checkpoint" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def fuzz_server(tiny_run, tiny_runs):
    """``aigc serve`` with a text ("code"), a translation ("pairs") and an image ("digits") model, small limits.

    The translation and digits models are the session's 30-step ones (tests/e2e/conftest.py): the fuzzing needs
    every kind of model, not good ones.
    """
    server = Server([tiny_run, f"pairs={tiny_runs['translate']}", f"digits={tiny_runs['digits']}"], "--api-key", KEY,
                    "--max-batch", "8", "--max-tokens", "8", "--max-n", "2", "--timeout", "30")
    yield server
    server.stop()


# which "model" a request names (None: as drawn), the route's own kind first: Hypothesis draws the first most often
FUZZ_MODELS = {"/v1/images/generations": ["digits", None, "code", "pairs"]}
TEXT_MODELS = ["code", "pairs", None, "digits"]
IMAGE_SIZES = [None, "8x8", "64x64", "1024x1024"]  # a few valid sizes, else the drawn string (seldom valid)
FUZZ_TIMEOUT_S = 60  # longer than the server's own deadline (--timeout 30, then a 504): a request that takes it hangs
_fuzz_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fuzz")


def _check_envelope(response: requests.Response, case) -> None:
    """A response is an OpenAI error envelope (4xx), a JSON body in the route's schema, or a whole event stream."""
    where = f"{case.method} {case.path} {case.body!r} -> {response.status_code} {response.text[:500]!r}"
    assert response.status_code < 500, where
    content_type = response.headers.get("content-type", "")
    if response.status_code >= 400:
        assert content_type.startswith("application/json"), where
        error = response.json()["error"]
        assert set(response.json()) == {"error"} and set(error) == {"message", "type", "param", "code"}, where
        assert isinstance(error["message"], str) and error["message"] and isinstance(error["type"], str), where
    elif content_type.startswith("text/event-stream"):
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", where
        chunks = [json.loads(event) for event in events[:-1]]
        objects = {"/v1/completions": "text_completion", "/v1/chat/completions": "chat.completion.chunk"}
        assert chunks and all(chunk.get("object") == objects[case.path] and "choices" in chunk for chunk in chunks), \
            where
    elif content_type.startswith("application/json"):
        case.validate_response(response, checks=[schemathesis.checks.response_schema_conformance])


def test_fuzzed_requests_get_an_answer_in_the_openai_shape(fuzz_server):
    """Property-based requests for every route of the server's OpenAPI schema, against a text, a translation and an
    image model: every answer is an OpenAI error envelope or a body of the route's schema, none is a 5xx, none hangs.
    """
    schema = schemathesis.openapi.from_dict(httpx.get(f"{fuzz_server.url}/openapi.json",
                                                      headers=fuzz_server.headers).json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/images/generations",
                                              "/v1/models"}
    for operation in operations:
        # the schema's "model" is any string: most requests name a loaded model, of each kind, so they reach it
        strategy = hypothesis.strategies.tuples(
            hypothesis.strategies.one_of(operation.as_strategy(),
                                         operation.as_strategy(generation_mode=GenerationMode.NEGATIVE)),
            hypothesis.strategies.sampled_from(FUZZ_MODELS.get(operation.path, TEXT_MODELS)),
            hypothesis.strategies.sampled_from(IMAGE_SIZES))

        @hypothesis.given(drawn=strategy)
        @hypothesis.settings(max_examples=200, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck),
                             phases=[phase for phase in hypothesis.Phase if phase is not hypothesis.Phase.shrink])
        def answered(drawn):
            case, model, size = drawn
            if model is not None and isinstance(case.body, dict):
                case.body["model"] = model
            if size is not None and isinstance(case.body, dict) and case.path == "/v1/images/generations":
                case.body["size"] = size
            if model is not None and isinstance(case.path_parameters, dict) and "model_id" in case.path_parameters:
                case.path_parameters["model_id"] = model
            request = case.as_transport_kwargs(base_url=fuzz_server.url, headers=fuzz_server.headers)
            call = _fuzz_pool.submit(requests.request, **request, timeout=FUZZ_TIMEOUT_S)
            try:
                response = call.result(timeout=FUZZ_TIMEOUT_S)
            except concurrent.futures.TimeoutError:
                pytest.fail(f"no answer in {FUZZ_TIMEOUT_S} s: {case.method} {case.path} {case.body!r}")
            _check_envelope(response, case)

        answered()


def test_playground_streams_in_a_headless_browser(server):
    """The page at / lists the models, streams a completion into the page and shows tokens/s."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:  # a failure under CI (tests/skips.py), where .ci/run installs it
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{server.url}/")
        page.fill("#key", KEY)
        page.dispatch_event("#key", "change")
        expect(page.locator("#model option")).to_have_count(1)
        # the sliders start from the model's own defaults (this run: generate.max_new_tokens=4, temperature 0.8,
        # top_k 40), and the first Send with them works
        expect(page.locator("#max_tokens")).to_have_value("4")
        assert page.locator("#max_tokens").get_attribute("max") == "1023"
        expect(page.locator("#temperature")).to_have_value("0.8")
        expect(page.locator("#top_k")).to_have_value("40")
        page.fill("#prompt", "Hello")
        page.click("#send")
        expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=20_000)
        expect(page.locator("#send")).to_be_enabled(timeout=20_000)
        assert page.locator("#error").inner_text() == ""
        page.click("#tab-completion")
        page.fill("#prompt", "ROMEO:")
        page.fill("#max_tokens", "40")
        page.fill("#seed", "1")
        page.click("#send")
        expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=20_000)
        expect(page.locator("#send")).to_be_enabled(timeout=20_000)
        output = page.locator("#output").inner_text()
        assert output.startswith("ROMEO:") and len(output) > len("ROMEO:") + 5
        assert page.locator("#error").inner_text() == ""
        page.click("#schema-row summary")  # a JSON schema box: the answer fits it (this vocabulary can write booleans)
        page.fill("#schema", '{"type": "boolean"}')
        page.click("#send")
        expect(page.locator("#send")).to_be_enabled(timeout=20_000)
        assert page.locator("#output").inner_text() in ("ROMEO:true", "ROMEO:false")
        page.fill("#schema", "{not json")
        page.click("#send")
        expect(page.locator("#error")).to_contain_text("the JSON schema is not JSON")
        page.fill("#schema", "")
        page.click("#tab-chat")  # a tools box: this run's own template cannot show tools, and the page says so
        page.click("#tools-row summary")
        page.fill("#tools", '[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]')
        page.fill("#prompt", "call f")
        page.click("#send")
        expect(page.locator("#error")).to_contain_text("does not take tools")
        browser.close()


def test_serving_doc_examples_run_against_a_live_server(server, tmp_path):
    """docs/serving.md: every python block, pointed at this test's server (its console blocks, curl included, run
    in tests/e2e/test_doc_commands.py against a server of the page's own)."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "serving.md").read_text(encoding="utf-8")
    python_blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert python_blocks
    for block in python_blocks:
        code = block.replace("http://127.0.0.1:8000", server.url).replace("sk-my-key", KEY)
        exec(compile(code, "serving.md", "exec"), {"__name__": "docs_serving"})
