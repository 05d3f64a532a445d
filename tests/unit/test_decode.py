"""The one decode core: the server's continuous batching and `aigc generate` give the same tokens for a
seed, a failing request fails alone, and inputs that used to NaN the probabilities decode."""

from __future__ import annotations

import threading

import pytest
import torch

from aigc.config import ModelConfig
from aigc.generate.decode import Event, Row
from aigc.generate.sampling import SamplingParams
from aigc.generate.text import TextGenerator
from aigc.models import GPT
from aigc.serve.scheduler import Request, Scheduler
from aigc.tokenizer import train_char

CORPUS = ["the quick brown fox jumps over the lazy dog\n", "hello world, hello there\n"] * 20


@pytest.fixture(scope="module")
def generator() -> TextGenerator:
    torch.manual_seed(0)
    tokenizer = train_char(CORPUS, 100)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=tokenizer.get_vocab_size())
    return TextGenerator(GPT(config), tokenizer)


def serve(generator: TextGenerator, requests: list[tuple[list[int], SamplingParams, int]]) -> list[list[Event]]:
    """Run ``(prompt ids, params, n)`` requests through one Scheduler at once; every event of each."""
    scheduler = Scheduler(generator, max_running=8)
    results: list[list[Event]] = [[] for _ in requests]
    done = threading.Semaphore(0)

    def sink_for(i: int, n: int):
        open_choices = [n]

        def sink(event: Event) -> None:
            results[i].append(event)
            if event.finish_reason or event.error:
                open_choices[0] -= 1
                if open_choices[0] == 0:
                    done.release()
        return sink

    scheduler.start()
    try:
        for i, (prompt, params, n) in enumerate(requests):
            scheduler.submit(Request(prompt, params, sink_for(i, n), n))
        for _ in requests:
            assert done.acquire(timeout=60), "a request was never answered"
    finally:
        scheduler.stop()
    return results


def text_of(events: list[Event], index: int = 0) -> str:
    return "".join(e.text for e in events if e.index == index)


def test_scheduler_and_generate_share_one_decode_core(generator):
    params = SamplingParams(max_new_tokens=30, temperature=1.0, top_k=20, seed=11, repetition_penalty=1.2,
                            frequency_penalty=0.3, stop=("dog",))
    prompts = ["the quick", "hello"]
    expected = [[c.text for c in generator.complete([p] * 2, params)] for p in prompts]
    served = serve(generator, [(generator.encode_prompt(p, params), params, 2) for p in prompts])
    assert [[text_of(events, i) for i in range(2)] for events in served] == expected


def test_a_failing_request_fails_alone(generator, monkeypatch):
    poison = 13
    original = Row.accept

    def accept(self, logits):
        if self.params.seed == poison:
            raise RuntimeError("boom")
        return original(self, logits)

    monkeypatch.setattr(Row, "accept", accept)
    good = SamplingParams(max_new_tokens=12, temperature=0)
    bad = SamplingParams(max_new_tokens=12, temperature=0, seed=poison)
    prompt = generator.encode_prompt("the", good)
    outcome = serve(generator, [(prompt, good, 1), (prompt, bad, 2), ([10_000], good, 2), (prompt, good, 1)])
    assert [e.error for e in outcome[1]] == ["generation failed: boom"] * 2
    assert len(outcome[2]) == 2 and all("generation failed" in e.error for e in outcome[2])  # bad id: prefill fails
    expected = generator.complete(["the"], good)[0].text
    assert text_of(outcome[0]) == text_of(outcome[3]) == expected
    assert not any(e.error for e in outcome[0] + outcome[3])


def test_extreme_settings_decode_or_are_refused(generator):
    greedy = generator.complete(["hello"], SamplingParams(max_new_tokens=20, temperature=0))[0].text
    assert generator.complete(["hello"], SamplingParams(max_new_tokens=20, temperature=1e-40))[0].text == greedy
    # a top_p that rounds to 0 in float32 keeps the most likely token: greedy again
    assert generator.complete(["hello"], SamplingParams(max_new_tokens=20, temperature=1.0, top_p=1e-300,
                                                        seed=1))[0].text == greedy
    penalised = generator.complete(["hello"], SamplingParams(max_new_tokens=20, temperature=1.0, seed=1,
                                                            repetition_penalty=0.01))[0]
    assert penalised.finish_reason in ("stop", "length") and len(penalised.token_ids) > 0
    with pytest.raises(Exception, match=r"repetition_penalty=.*: input should be (greater|less) than or equal to"):
        SamplingParams(repetition_penalty=1e-40)


def test_seed_beyond_63_bits_is_refused():
    with pytest.raises(Exception, match="seed must be in"):
        SamplingParams(seed=2**64)


def test_slot_storage_grows_with_the_rows_and_decodes_the_same(generator, monkeypatch):
    from aigc.generate.slots import SlotBatch

    monkeypatch.setattr(generator.engine, "slot_batch", lambda slots: SlotBatch(generator.model, slots, positions=4))
    # grows 4 -> 8 -> ... -> 48
    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=5, top_k=10)
    expected = [c.text for c in generator.complete(["the quick"] * 2, params)]
    served = serve(generator, [(generator.encode_prompt("the quick", params), params, 2)])[0]
    assert [text_of(served, i) for i in range(2)] == expected
    batch = SlotBatch(generator.model, 2, positions=4)
    assert batch.caches[0].keys.shape[2] == 4
    batch.reserve(5)
    assert batch.allocated == 8 and batch.caches[0].keys.shape[2] == 8
    batch.reserve(1000)
    assert batch.allocated == generator.model.config.block_size  # never past the context
