"""Prompt prefixes reused between requests give what computing each prompt whole gives: the same logits, and
the same greedy tokens through the server's scheduler, also when the cache is too small to keep them all."""

from __future__ import annotations

import threading

import pytest
import torch

from aigc.config import ModelConfig
from aigc.generate.prefix_cache import PrefixCache
from aigc.generate.sampling import SamplingParams
from aigc.generate.slots import SlotBatch
from aigc.generate.text import TextGenerator
from aigc.models import GPT
from aigc.serve.scheduler import Request, Scheduler
from aigc.tokenizer import train_char

SYSTEM = "You are a careful assistant. Answer in one short line, and never repeat the question. " * 2


@pytest.fixture(scope="module")
def generator() -> TextGenerator:
    torch.manual_seed(0)
    tokenizer = train_char([SYSTEM + "abcdefghijklmnopqrstuvwxyz?!0123456789"], 100)
    config = ModelConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=512, position="rope", norm="rmsnorm",
                         mlp="swiglu", vocab_size=tokenizer.get_vocab_size())
    return TextGenerator(GPT(config).eval(), tokenizer)


def test_a_prefix_from_the_cache_gives_the_logits_of_the_whole_prompt(generator):
    ids = generator.tokenizer.encode(SYSTEM + "what is two plus two?").ids
    other = generator.tokenizer.encode(SYSTEM + "name a colour!").ids
    cache = PrefixCache(max_bytes=1 << 30, block=16)
    cached, plain = SlotBatch(generator.model, 2, prefix_cache=cache), SlotBatch(generator.model, 2)
    with torch.inference_mode():
        cached.prefill(other, 1)  # keeps the shared system prompt's blocks
        logits, _ = cached.prefill(ids, 1)
        expected, _ = plain.prefill(ids, 1)
    shared = next(i for i, (a, b) in enumerate(zip(ids, other)) if a != b)
    assert cache.reused_tokens == shared // 16 * 16 > 100  # whole blocks of the shared part, reused once
    assert torch.allclose(logits, expected, atol=1e-5), (logits - expected).abs().max()
    with torch.inference_mode():  # the rows continue from the cached keys as from computed ones
        steps = cached.step([3, 3]), plain.step([3, 3])
    assert torch.allclose(steps[0][1], steps[1][0], atol=1e-5)


def _greedy(scheduler: Scheduler, prompts: list[list[int]]) -> list[list[int]]:
    """Each prompt's 12 greedy tokens through ``scheduler``, one request after another."""
    outputs = []
    for prompt in prompts:
        tokens, done = [], threading.Event()

        def sink(event, tokens=tokens, done=done):
            if event.token is not None:
                tokens.append(event.token)
            if event.finish_reason or event.error:
                done.set()

        scheduler.submit(Request(prompt, SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True), sink))
        assert done.wait(30)
        outputs.append(tokens)
    return outputs


def test_greedy_outputs_are_the_same_with_the_cache_across_evictions(generator):
    turns = ["hi", "what is two plus two?", "and three?", "name a colour!", "why?"]
    prompts = [generator.tokenizer.encode(SYSTEM + " ".join(turns[: i + 1])).ids for i in range(len(turns))]
    prompts += prompts[::-1]  # the first ones again, after the small cache had to evict
    block_bytes = 2 * 2 * 2 * 16 * 8 * 4  # layers x (keys, values) x kv heads x block x head size x float32
    runs = {}
    for name, budget in [("none", 0), ("small", 12 * block_bytes), ("large", 1 << 30)]:
        scheduler = Scheduler(generator, max_running=4, prefix_cache_bytes=budget)
        scheduler.start()
        try:
            runs[name] = _greedy(scheduler, prompts)
        finally:
            scheduler.stop()
        cache = scheduler.batch.prefix_cache
        if cache is not None:
            assert cache.bytes <= budget and cache.hit_rate > 0.3, (name, cache.bytes, cache.hit_rate)
            assert (cache.evicted > 0) == (name == "small"), cache.evicted
    assert runs["small"] == runs["none"] and runs["large"] == runs["none"]


def test_a_prompt_prefilled_in_chunks_gives_the_logits_of_one_pass(generator):
    ids = generator.tokenizer.encode(SYSTEM + "what is two plus two?").ids
    chunked, whole = SlotBatch(generator.model, 1), SlotBatch(generator.model, 1)
    with torch.inference_mode():
        prefill = chunked.start(ids)
        spent = [chunked.run(prefill, 37) for _ in range(len(ids) // 37 + 1)]
        logits, _ = chunked.place(prefill, 1)
        expected, _ = whole.prefill(ids, 1)
    assert [s[1] for s in spent] == [False] * (len(ids) // 37) + [True] and sum(s[0] for s in spent) == len(ids)
    assert torch.allclose(logits, expected, atol=1e-5)


def test_running_streams_keep_decoding_while_a_long_prompt_is_prefilled_in_chunks(generator):
    """Counted in decoding steps, not time: between a long prompt's arrival and its first token, a running stream
    gets a token per chunk of the prompt (with chunks as long as the prompt it would get none or one)."""
    long_prompt = generator.tokenizer.encode(SYSTEM * 2).ids  # ~350 tokens
    for chunk, at_least in [(32, len(long_prompt) // 32 - 1), (4096, 0)]:
        scheduler = Scheduler(generator, max_running=4, prefill_chunk=chunk)
        order, started, done = [], threading.Event(), threading.Event()

        def running(event, order=order, started=started):
            order.append("running")
            started.set()

        def arriving(event, order=order, done=done):
            order.append("long")
            done.set()

        scheduler.start()
        try:
            params = SamplingParams(max_new_tokens=400, temperature=0, ignore_eos=True)
            stream = Request(generator.tokenizer.encode("hi").ids, params, running)
            scheduler.submit(stream)
            assert started.wait(30)
            order.append("submitted")  # the stream's tokens before this point do not count
            scheduler.submit(Request(long_prompt, SamplingParams(max_new_tokens=1, temperature=0), arriving))
            assert done.wait(30)
            stream.cancelled = True
        finally:
            scheduler.stop()
        between = order[order.index("submitted") + 1 : order.index("long")].count("running")
        assert between >= at_least and (chunk < len(long_prompt) or between <= 2), (chunk, between)
