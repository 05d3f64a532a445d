"""The one decode core: the server's continuous batching and `aigc generate` give the same tokens for a
seed, a failing request fails alone, and inputs that used to NaN the probabilities decode."""

from __future__ import annotations

import threading

import pytest
import torch

from aigc.config import ModelConfig
from aigc.errors import GenerationError
from aigc.generate.decode import Event, Row, prompt_logprobs, seed_base
from aigc.generate.grammar import Grammar
from aigc.generate.sampling import SamplingParams
from aigc.generate.text import TextGenerator
from aigc.models import GPT
from aigc.serve import scheduler as scheduler_module
from aigc.serve.scheduler import Request, Scheduler
from aigc.tokenizer import train_char

CORPUS = ["the quick brown fox jumps over the lazy dog\n", "hello world, hello there\n"] * 20


@pytest.fixture(scope="module")
def generator() -> TextGenerator:
    torch.manual_seed(0)
    tokenizer = train_char(CORPUS, 100)
    config = ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=tokenizer.get_vocab_size())
    return TextGenerator(GPT(config), tokenizer)


def serve(generator: TextGenerator, requests: list[tuple[list[int], SamplingParams, int]],
          **options) -> list[list[Event]]:
    """Run ``(prompt ids, params, n)`` requests through one Scheduler at once; every event of each. ``options``
    (e.g. ``prompt_logprobs``) go to every request whose seed is ``SCORED_SEED``."""
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
            scheduler.submit(Request(prompt, params, sink_for(i, n), n,
                                     **(options if params.seed == SCORED_SEED else {})))
        for _ in requests:
            assert done.acquire(timeout=60), "a request was never answered"
    finally:
        scheduler.stop()
    return results


SCORED_SEED = 17


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
    scored = SamplingParams(max_new_tokens=12, temperature=0, seed=SCORED_SEED)

    def prompt_logprobs(*args):
        raise RuntimeError("scoring broke")

    monkeypatch.setattr(scheduler_module, "prompt_logprobs", prompt_logprobs)
    outcome = serve(generator, [(prompt, good, 1), (prompt, bad, 2), ([10_000], good, 2), (prompt, scored, 2),
                                (prompt, good, 1)], prompt_logprobs=1)
    assert [e.error for e in outcome[1]] == ["generation failed: boom"] * 2
    assert len(outcome[2]) == 2 and all("generation failed" in e.error for e in outcome[2])  # bad id: prefill fails
    assert sorted((e.index, e.error) for e in outcome[3]) == [(0, "generation failed: scoring broke"),
                                                              (1, "generation failed: scoring broke")]
    expected = generator.complete(["the"], good)[0].text
    assert text_of(outcome[0]) == text_of(outcome[4]) == expected
    assert not any(e.error for e in outcome[0] + outcome[4])


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

    monkeypatch.setattr(generator.engine, "slot_batch", lambda slots, _: SlotBatch(generator.model, slots, positions=4))
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


def letters(ids: list[int]) -> str:
    """A four-token vocabulary, one letter each."""
    return "".join("abcd"[i] for i in ids)


LOGITS = torch.tensor([0.0, 5.0, 2.0, 3.0])  # the same logits every step: only the row's counts change its choice


def test_a_row_penalises_its_prompt_and_its_own_tokens_and_stops_at_its_limit():
    """Greedy, repetition penalty 4, frequency penalty 1.5 per occurrence: the prompt's "b" starts penalised
    (5 -> 1.25), so "d" (3) wins; then what the row produced is penalised as well, once per time: "c", "b", "a",
    "b" again (1.25 - 1.5), then "d" (b is at 1.25 - 3). The limit-th token ends the row with "length"."""
    params = SamplingParams(temperature=0, repetition_penalty=4.0, frequency_penalty=1.5)
    row = Row(0, torch.tensor([1, 1]), params, vocab_size=4, limit=6, seed=0, decode=letters)
    events = [row.accept(LOGITS) for _ in range(6)]
    assert "".join(e.text for e in events) == "dcbabd"
    assert [e.finish_reason for e in events] == [None] * 5 + ["length"]
    assert row.done and row.produced == 6 and row.last == 3
    # the counts the penalties read: the prompt's "b" twice, then each produced token once per time
    assert row.generated.tolist() == [[1, 2, 1, 2]] and row.seen.tolist() == [[1, 4, 1, 2]]


def test_text_held_back_for_a_stop_string_is_emitted_when_the_row_ends_otherwise():
    """"b" could begin the stop string "bc", so the stream holds it back; a stop token or the row's limit that
    comes next ends the row with the "b" emitted, not lost."""
    params = SamplingParams(temperature=0, stop=("bc",))
    by_stop_id = Row(0, torch.tensor([0]), params, vocab_size=4, limit=5, seed=0, decode=letters,
                     stop_ids=frozenset({3}))
    first, last = by_stop_id.accept(LOGITS), by_stop_id.accept(torch.tensor([0.0, 0.0, 0.0, 9.0]))
    assert (first.text, first.finish_reason, last.text, last.finish_reason) == ("", None, "b", "stop")
    by_limit = Row(0, torch.tensor([0]), params, vocab_size=4, limit=1, seed=0, decode=letters)
    event = by_limit.accept(LOGITS)
    assert (event.token, event.text, event.finish_reason) == (1, "b", "length")


def test_stop_ids_of_the_caller_and_of_the_request_both_end_a_row():
    """A stop id given to the row or in ``stop_token_ids`` ends it with "stop" and emits no text of its own."""
    for stop_ids, params in [(frozenset({1}), SamplingParams(temperature=0)),
                             (frozenset(), SamplingParams(temperature=0, stop_token_ids=(1,)))]:
        row = Row(3, torch.tensor([0]), params, vocab_size=4, limit=10, seed=0, decode=letters, stop_ids=stop_ids)
        event = row.accept(LOGITS)
        assert (event.index, event.token, event.text, event.finish_reason, row.done) == (3, 1, "", "stop", True)


class ScriptedMatcher:
    """A grammar's matcher that allows the tokens ``allowed`` gives for each step (None: nothing can continue)
    and is complete after ``complete_after`` tokens."""

    def __init__(self, allowed: list[set[int] | None], complete_after: int = 99):
        self.allowed, self.complete_after, self.taken = allowed, complete_after, []

    def blocked(self) -> torch.Tensor | None:
        allowed = self.allowed[len(self.taken)]
        return None if allowed is None else torch.tensor([t not in allowed for t in range(4)])

    def take(self, token: int) -> bool:
        self.taken.append(token)
        return True

    @property
    def complete(self) -> bool:
        return len(self.taken) >= self.complete_after


def constrained_row(matcher: ScriptedMatcher, limit: int = 5) -> Row:
    params = SamplingParams(temperature=0, stop=("bc",), grammar=Grammar("regex", "[bd]+"))
    constraints = type("Constraints", (), {"matcher": lambda self, grammar: matcher})()
    return Row(0, torch.tensor([0]), params, vocab_size=4, limit=limit, seed=0, decode=letters,
               constraints=constraints)


def test_a_constrained_row_samples_only_allowed_tokens_and_ends_when_the_grammar_does():
    """"b" (logit 5) is the row's first choice; where the grammar forbids it the row takes the best allowed token.
    A complete grammar ends the row with "stop", a grammar nothing can continue with "constraint"; either way the
    text held back for the stop string "bc" is emitted and the row is done."""
    matcher = ScriptedMatcher([{1, 3}, {2, 3}, {1}], complete_after=3)
    row = constrained_row(matcher)
    events = [row.accept(LOGITS) for _ in range(3)]
    assert matcher.taken == [1, 3, 1] and [e.finish_reason for e in events] == [None, None, "stop"]
    assert "".join(e.text for e in events) == "bdb" and row.done
    last_emitted = constrained_row(ScriptedMatcher([{3}, {3}], complete_after=2))
    assert [last_emitted.accept(LOGITS).text for _ in range(2)] == ["d", "d"]  # the last token's own text kept
    stuck = constrained_row(ScriptedMatcher([{1}, None]))
    first, last = stuck.accept(LOGITS), stuck.accept(LOGITS)
    assert (first.text, last.index, last.text, last.finish_reason, stuck.done) == ("", 0, "b", "constraint", True)


def test_a_grammar_for_a_model_without_constraints_is_refused():
    params = SamplingParams(grammar=Grammar("regex", "[bd]+"))
    with pytest.raises(GenerationError, match="^this model cannot constrain its output to a grammar$"):
        Row(0, torch.tensor([0]), params, vocab_size=4, limit=5, seed=0, decode=letters)


def test_unseeded_requests_draw_seeds_of_their_own():
    assert len({seed_base(SamplingParams()) for _ in range(64)}) == 64  # a small range would repeat one
    assert seed_base(SamplingParams(seed=5)) == 5


def test_prompt_scores_list_the_asked_alternatives_even_past_the_prompts_length():
    """OpenAI's logprobs go up to 5 alternatives whatever the prompt's length; 0 asks for the scores alone."""
    logits = torch.randn(2, 10)  # after each of the prompt's 2 tokens
    scores = prompt_logprobs([4, 7], logits, 5)
    assert [s.token for s in scores] == [7] and len(scores[0].top) == 5
    assert scores[0].logprob == pytest.approx(logits[0].log_softmax(-1)[7].item())
    assert [s.top for s in prompt_logprobs([4, 7], logits, 0)] == [[]]


def test_logprobs_are_the_models_before_penalties_with_the_top_alternatives():
    """With ``logprobs`` an event carries the log-probability of its token under the raw logits (not the
    penalised ones that chose it) and the ``top_logprobs`` most likely tokens, most likely first."""
    params = SamplingParams(temperature=0, repetition_penalty=4.0, logprobs=True)
    row = Row(0, torch.tensor([1]), params, vocab_size=4, limit=10, seed=0, top_logprobs=2)
    event = row.accept(LOGITS)
    logprobs = LOGITS.log_softmax(-1).tolist()
    assert event.token == 3 and event.text == "" and event.finish_reason is None
    assert event.logprob == pytest.approx(logprobs[3])
    assert event.top_logprobs == [(1, pytest.approx(logprobs[1])), (3, pytest.approx(logprobs[3]))]
