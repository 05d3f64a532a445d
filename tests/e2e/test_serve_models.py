"""Several models behind one `aigc serve`: listing, routing by `model`, ids of runs whose folders share a name,
the images route's choice of model and its error cases; and the penalties and stop token ids that shape a
completion. The runs are the session's tiny ones (tests/e2e/conftest.py), from tests/fixtures and scikit-learn's
digits."""

from __future__ import annotations

import base64
import io
import shutil
from collections import Counter
from pathlib import Path

import httpx
import pytest
from PIL import Image

from aigc.checkpoint import load_checkpoint
from aigc.generate.sampling import SamplingParams
from aigc.generate.text import TextGenerator
from aigc.tasks.pairs.translator import Translator, beam_params
from tests.e2e.helpers import Server


@pytest.fixture(scope="module")
def runs(tiny_runs) -> dict[str, Path]:
    """The session's tiny text, translation and digits runs (tests/e2e/conftest.py): two folders named "run"."""
    return tiny_runs


@pytest.fixture(scope="module")
def server(runs):
    server = Server([runs["text"], runs["translate"], runs["digits"]])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ids(server) -> dict[str, str]:
    listed = httpx.get(f"{server.url}/v1/models").json()["data"]
    return {"text": listed[0]["id"], "translate": listed[1]["id"], "digits": listed[2]["id"]}


def post(server: Server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=120)


def test_models_lists_each_run_with_its_kind_context_and_defaults(server, runs):
    listed = httpx.get(f"{server.url}/v1/models").json()["data"]
    found = [m["id"] for m in listed]
    assert len(set(found)) == 3, found
    assert found[0] in ("run", "run-1") and found[1] == "run-2" and found[2] == "digits", found
    for card, name, kind in zip(listed, ["text", "translate", "digits"], ["gpt", "seq2seq", "image"]):
        saved = load_checkpoint(runs[name]).config
        assert card["kind"] == kind and card["object"] == "model", card
        assert card["context"] == saved.model.block_size, (card["id"], card["context"])
        assert card["defaults"] == saved.generate.model_dump(mode="json"), card["id"]
        assert httpx.get(f"{server.url}/v1/models/{card['id']}").json() == card
    assert listed[0]["defaults"]["top_k"] == 11 and listed[0]["defaults"]["frequency_penalty"] == 1.5
    assert listed[1]["defaults"]["beams"] == 4 and listed[2]["defaults"]["guidance"] == 2.0  # the recipes' own


def test_requests_are_routed_by_model(server, runs, ids):
    text = post(server, "/v1/completions", {"model": ids["text"], "prompt": "ROMEO:", "max_tokens": 12,
                                            "temperature": 0, "seed": 1})
    assert text.status_code == 200, text.text
    assert text.json()["model"] == ids["text"]
    expected = TextGenerator.from_checkpoint(runs["text"]).complete(
        ["ROMEO:"], SamplingParams(max_new_tokens=12, temperature=0, frequency_penalty=1.5))[0]
    assert text.json()["choices"][0]["text"] == expected.text

    translated = post(server, "/v1/completions", {"model": ids["translate"], "prompt": "I love you.", "max_tokens": 20,
                                                  "temperature": 0})
    assert translated.status_code == 200, translated.text
    translator = Translator.from_checkpoint(runs["translate"])  # with the run's own beam search, as the server
    beam = beam_params(load_checkpoint(runs["translate"]).config.generate, 20)
    reference = translator.translate(["I love you."], SamplingParams(max_new_tokens=20, temperature=0), beam)[0][0]
    assert translated.json()["choices"][0]["text"] == reference and translated.json()["model"] == ids["translate"]
    chat = post(server, "/v1/chat/completions", {"model": ids["translate"], "max_tokens": 20, "temperature": 0,
                                                 "messages": [{"role": "user", "content": "Hello."},
                                                              {"role": "user", "content": "I love you."}]})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == reference

    wrong = post(server, "/v1/completions", {"model": ids["digits"], "prompt": "x"})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "model"
    assert wrong.json()["error"]["code"] == "not_a_text_model"


def _pngs(response: httpx.Response) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in response.json()["data"]]


def test_the_images_route_picks_the_one_image_model(server):
    body = {"prompt": "the digit four", "n": 2, "size": "32x32", "seed": 3}
    chosen = post(server, "/v1/images/generations", body)
    named = post(server, "/v1/images/generations", {**body, "model": "digits"})
    assert chosen.status_code == 200 and named.status_code == 200, chosen.text
    assert [d["b64_json"] for d in chosen.json()["data"]] == [d["b64_json"] for d in named.json()["data"]]
    pictures = _pngs(chosen)
    assert len(pictures) == 2 and all(p.size == (32, 32) for p in pictures)
    native = post(server, "/v1/images/generations", {"prompt": "the digit four", "seed": 3})
    assert native.status_code == 200 and _pngs(native)[0].size == (8, 8)  # no size: the model's own 8x8


@pytest.mark.parametrize("body, status, param, code", [
    ({"model": "TEXT", "prompt": "the digit one"}, 400, "model", "not_an_image_model"),
    ({"model": "TRANSLATE", "prompt": "the digit one"}, 400, "model", "not_an_image_model"),
    ({"model": "digits", "prompt": "the digit one", "size": "30x30"}, 400, "size", None),
    ({"model": "digits", "prompt": "the digit one", "size": "64x32"}, 400, "size", None),
    ({"model": "digits", "prompt": "the digit one", "size": "2048x2048"}, 400, "size", None),
    ({"model": "digits", "prompt": "the digit one", "size": "big"}, 400, "size", None),
    ({"model": "digits", "prompt": "the digit one", "n": 9}, 400, "n", None),
    ({"model": "digits", "prompt": "the digit one", "n": 0}, 400, "n", "invalid_value"),
    ({"model": "digits", "prompt": ""}, 400, "prompt", None),
    ({"model": "digits", "prompt": "   "}, 400, "prompt", None),
    ({"model": "digits"}, 400, "prompt", "invalid_value"),
    ({"model": "nope", "prompt": "the digit one"}, 404, "model", "model_not_found"),
    ({"model": "digits", "prompt": "the digit one", "response_format": "url"}, 400, "response_format", "invalid_value"),
], ids=["text-model", "translation-model", "size-not-a-multiple", "size-not-square", "size-too-large",
        "size-not-a-size", "n-over-the-limit", "n-zero", "empty-prompt", "blank-prompt", "no-prompt", "unknown-model",
        "url-response"])
def test_images_api_errors(server, ids, body, status, param, code):
    body = {**body, "model": {"TEXT": ids["text"], "TRANSLATE": ids["translate"]}.get(body["model"], body["model"])}
    response = post(server, "/v1/images/generations", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"], error
    assert error["param"] == param and error["code"] == code, error
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error"), error


def _most_repeated(text: str) -> int:
    """How often the commonest character occurs (the text model is character-level: a character is a token)."""
    return Counter(text).most_common(1)[0][1]


def test_frequency_penalty_changes_repetition(server, ids):
    def complete(**fields) -> str:
        body = {"model": ids["text"], "prompt": "the ", "max_tokens": 40, "seed": 2, "ignore_eos": True, **fields}
        response = post(server, "/v1/completions", body)
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "length" and response.json()["usage"]["completion_tokens"] == 40
        return choice["text"]

    # greedy, this tiny model writes one character over and over; a penalty per occurrence breaks that up
    plain, penalised = complete(temperature=0, frequency_penalty=0), complete(temperature=0, frequency_penalty=2)
    assert _most_repeated(penalised) < _most_repeated(plain) / 2, (plain, penalised)
    # sampled with one seed, a negative penalty (a reward per occurrence) makes it repeat more
    sampled, rewarded = complete(temperature=1, frequency_penalty=0), complete(temperature=1, frequency_penalty=-2)
    assert _most_repeated(rewarded) > _most_repeated(sampled), (sampled, rewarded)
    assert complete(temperature=0) == complete(temperature=0, frequency_penalty=1.5) != plain  # the run's default


def test_stop_token_ids_end_the_output_before_the_token(runs):
    """Not in the HTTP API (it ignores an unknown `stop_token_ids` field); the library's SamplingParams has it."""
    generator = TextGenerator.from_checkpoint(runs["text"])
    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=11, ignore_eos=True)
    whole = generator.complete(["KING:"], params)[0]
    assert len(whole.token_ids) == 40 and whole.finish_reason == "length"
    index = next(i for i, t in enumerate(whole.token_ids) if i >= 5 and t not in whole.token_ids[:i])
    stop = whole.token_ids[index]
    stopped = generator.complete(["KING:"], SamplingParams(max_new_tokens=40, temperature=1.0, seed=11,
                                                            ignore_eos=True, stop_token_ids=(stop,)))[0]
    assert stopped.finish_reason == "stop" and stopped.token_ids == whole.token_ids[:index]
    assert stopped.text == generator.decode(whole.token_ids[:index]) and stop not in stopped.token_ids
    streamed = generator.stream(["KING:"], SamplingParams(max_new_tokens=40, temperature=1.0, seed=11,
                                                          ignore_eos=True, stop_token_ids=(stop,)))
    assert "".join(event.text for event in streamed) == stopped.text


@pytest.fixture(scope="module")
def image_runs(runs, tmp_path_factory) -> list[Path]:
    """The digits run three times: as `digits`, as another `digits`, and as a folder named `digits-1`."""
    root = tmp_path_factory.mktemp("copies")
    copies = [runs["digits"]]
    for folder in ("d/digits", "e/digits-1"):
        shutil.copytree(runs["digits"], root / folder, symlinks=True)
        copies.append(root / folder)
    return copies


@pytest.fixture(scope="module")
def image_server(image_runs):
    server = Server(image_runs)
    yield server
    server.stop()


def test_two_image_models_need_a_model_name(image_server):
    ids = [m["id"] for m in httpx.get(f"{image_server.url}/v1/models").json()["data"]]
    body = {"prompt": "the digit two", "seed": 5}
    unnamed = post(image_server, "/v1/images/generations", body)
    assert unnamed.status_code == 400, unnamed.text
    error = unnamed.json()["error"]
    assert error["param"] == "model" and "model" in error["message"] and error["type"] == "invalid_request_error"
    for model_id in ids:
        named = post(image_server, "/v1/images/generations", {**body, "model": model_id})
        assert named.status_code == 200 and len(named.json()["data"]) == 1, (model_id, named.text)


def test_every_run_gets_its_own_id(image_server):
    """Folders digits, digits and digits-1: three runs, three ids (a made-up id must not take a folder's name)."""
    ids = [m["id"] for m in httpx.get(f"{image_server.url}/v1/models").json()["data"]]
    assert len(ids) == 3 and len(set(ids)) == 3, ids
