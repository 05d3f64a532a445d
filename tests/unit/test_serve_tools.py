"""Tool calls through the official ``openai`` client, in process: an untrained model behind a Hermes-style chat
template (calls between ``<tool_call>`` tags) makes valid calls when one is required, a conversation with the
calls and their results goes back through the template, and what cannot work is a 400 naming the field."""

from __future__ import annotations

import json

import openai
import pytest
import torch
from fastapi.testclient import TestClient

from aigc.chat_template import ChatTemplate
from aigc.config import ModelConfig
from aigc.generate.text import TextGenerator
from aigc.models import GPT
from aigc.serve.schemas import Message, Tool
from aigc.serve.tools import ToolUse
from aigc.tokenizer import train_bpe
from tests.unit.test_serve_app import CORPUS, app_for, post

HERMES = (
    "{%- if tools %}<|im_start|>system\nYou may call these functions:\n{% for tool in tools %}{{ tool | tojson }}\n"
    "{% endfor %}Call one as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call><|im_end|>\n{% endif %}"
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}<tool_call>\n{{ call.function | tojson }}\n"
    "</tool_call>{% endfor %}{% else %}{{ message.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "the weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[a-z]{1,8}$"},
                                                           "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                          "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}}, "required": ["zone"],
    "additionalProperties": False}}}
ASK = [{"role": "user", "content": "weather in paris?"}]


@pytest.fixture(scope="module")
def served():
    torch.manual_seed(0)
    tokenizer = train_bpe(CORPUS, 300)
    config = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=2048, vocab_size=tokenizer.get_vocab_size())
    generator = TextGenerator(GPT(config).eval(), tokenizer, chat=ChatTemplate(HERMES, stop=("<|im_end|>",),
                                                                                ends_with_eot=False))
    app, model = app_for(generator, max_batch=4)
    with TestClient(app) as client:
        yield client, openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client,
                                    max_retries=0), model
    model.worker.stop()


def _fits(call, tool: dict) -> dict:
    arguments = json.loads(call.function.arguments)
    assert call.function.name == tool["function"]["name"] and call.id.startswith("call_"), call
    properties = tool["function"]["parameters"]["properties"]
    assert set(arguments) == set(properties), arguments
    return arguments


def test_a_named_or_required_call_is_always_valid(served):
    _, client, _ = served
    for seed in (1, 2, 3):
        named = client.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER, TIME], seed=seed,
                                               tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                               temperature=1.0, max_tokens=160)
        choice = named.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice
        arguments = _fits(choice.message.tool_calls[0], WEATHER)
        assert 1 <= arguments["days"] <= 7 and arguments["city"].isalpha()
        required = client.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER, TIME], seed=seed,
                                                  tool_choice="required", temperature=1.0, max_tokens=160)
        call = required.choices[0].message.tool_calls[0]
        _fits(call, WEATHER if call.function.name == "get_weather" else TIME)


def test_a_call_streams_as_a_tool_call_delta(served):
    _, client, _ = served
    chunks = list(client.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER], seed=4, stream=True,
                                                 tool_choice="required", temperature=1.0, max_tokens=160))
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(deltas) == 1 and deltas[0][0].index == 0
    _fits(deltas[0][0], WEATHER)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_the_calls_and_their_results_go_back_through_the_template(served):
    _, client, model = served
    first = client.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER], seed=5, temperature=1.0,
                                           tool_choice="required", max_tokens=160).choices[0].message
    conversation = [*ASK, first.model_dump(exclude_none=True),
                    {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": "sunny, 21 C"}]
    final = client.chat.completions.create(model="tiny", messages=conversation, tools=[WEATHER], seed=5,
                                           max_tokens=5)  # auto: words or a call, both fine for a random model
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")
    text, _ = model.chat_prompt(_messages(conversation), [WEATHER])
    assert f'<tool_call>\n{{"name": "get_weather", "arguments": {first.tool_calls[0].function.arguments}}}' in text
    assert "<|im_start|>tool\nsunny, 21 C<|im_end|>" in text and '"description": "the weather in a city"' in text


def _messages(conversation: list[dict]) -> list[Message]:
    return [Message.model_validate(message) for message in conversation]


@pytest.mark.parametrize("extra, param", [
    ({"tool_choice": {"type": "function", "function": {"name": "get_stock"}}}, "tool_choice"),
    ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools.0.function.name"),
    ({"tools": [], "tool_choice": "required"}, "tool_choice"),
])
def test_tool_requests_that_cannot_work_are_a_400_naming_the_field(served, extra, param):
    client, _, _ = served
    response = post(client, "/v1/chat/completions", {"model": "tiny", "messages": ASK, "tools": [WEATHER], **extra})
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


@pytest.mark.parametrize("tagged, text, words, called", [
    (True, 'Let me look.<tool_call>\n{"name": "get_time", "arguments": {"zone": "utc"}}\n</tool_call>', "Let me look.",
     [("get_time", {"zone": "utc"})]),
    (True, '<tool_call>{"name": "get_stock", "arguments": {}}</tool_call>', None, []),  # not offered: words
    (True, "<tool_call>{not json</tool_call>", None, []),
    (False, '{"name": "get_time", "parameters": {"zone": "cet"}}', None, [("get_time", {"zone": "cet"})]),
    (False, "It is noon.", "It is noon.", []),
])
def test_a_reply_is_read_as_words_and_calls(tagged, text, words, called):
    tool_use = ToolUse([Tool.model_validate(WEATHER), Tool.model_validate(TIME)], "auto", tagged)
    content, calls = tool_use.parse(text)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == called
    assert content == (words if called else text)
