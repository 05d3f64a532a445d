"""The encoder-decoder: masks, cached decoding, beam search, and learning a small task."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from aigc.config import ModelConfig
from aigc.generate.beam import BeamParams, _banned, beam_search
from aigc.generate.engine import Engine
from aigc.generate.sampling import SamplingParams
from aigc.models import Seq2Seq
from tests.conftest import lively

STYLES = {
    "gpt2": dict(norm="layernorm", mlp="gelu", position="learned", bias=True),
    "llama": dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False, n_kv_head=1),
}
GREEDY = SamplingParams(max_new_tokens=12, temperature=0)


def tiny(style: str = "llama", vocab: int = 40, **overrides) -> Seq2Seq:
    torch.manual_seed(0)
    options = dict(kind="seq2seq", n_layer=2, n_encoder_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=vocab)
    return Seq2Seq(ModelConfig(**{**options, **STYLES[style], **overrides})).eval()


def lively_tiny(style: str = "llama") -> Seq2Seq:
    return lively(tiny(style))


SOURCES = [[3, 4, 5, 6, 0], [7, 8, 0], [9, 10, 11, 12, 13, 14, 0]]  # different lengths: padded in a batch
START, END = 1, 39  # an end token these models rarely choose, so that each hypothesis is long


@pytest.mark.parametrize("style", STYLES)
def test_source_padding_is_never_attended_to(style):
    model = tiny(style)
    src = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 9, 9]])
    mask = torch.tensor([[True, True, True, False, False]] * 2)
    tgt = torch.tensor([[1, 2, 3, 4]] * 2)
    logits = model(src, mask, tgt)
    assert torch.allclose(logits[0], logits[1], atol=1e-5)  # the padded tokens differ, the output does not
    unpadded = model(src[:1, :3], mask[:1, :3], tgt[:1])
    assert torch.allclose(logits[0], unpadded[0], atol=1e-5)


def test_separate_embeddings():
    tied, separate = tiny(), tiny(share_embeddings=False)
    assert separate.source_wte is not None and tied.source_wte is None
    assert separate.num_params() - tied.num_params() == 40 * 32
    src, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.bool)
    assert separate(src, mask, torch.tensor([[1, 2]])).shape == (1, 2, 40)


@pytest.mark.parametrize("style", STYLES)
def test_decoder_never_sees_the_future(style):
    model = tiny(style)
    src, mask = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.bool)
    a = model(src, mask, torch.tensor([[1, 2, 3, 4, 5]]))
    b = model(src, mask, torch.tensor([[1, 2, 3, 9, 9]]))
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6)
    assert not torch.allclose(a[:, 3:], b[:, 3:], atol=1e-3)


def uncached_greedy(model: Seq2Seq, source: list[int], start: int, end: int, steps: int) -> list[int]:
    """Greedy decoding that re-runs the whole decoder every step (no cache), as a reference."""
    src = torch.tensor([source])
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            token = model(src, torch.ones_like(src, dtype=torch.bool), torch.tensor([[start, *out]]))[0, -1].argmax().item()
            if token == end:
                break
            out.append(token)
    return out


@pytest.mark.parametrize("style", STYLES)
def test_cached_and_uncached_decoding_are_identical(style):
    model = lively_tiny(style)
    cached = [h[0].tokens for h in Engine(model).translate(SOURCES, start=START, end=END, params=GREEDY)]
    assert cached == [uncached_greedy(model, source, START, END, GREEDY.max_new_tokens) for source in SOURCES]
    assert len({tuple(tokens) for tokens in cached}) == len(SOURCES) and min(map(len, cached)) > 3  # not vacuous


def test_beam_of_one_equals_greedy():
    engine = Engine(lively_tiny())
    greedy = engine.translate(SOURCES, START, END, GREEDY)
    beam = engine.translate(SOURCES, START, END, GREEDY, BeamParams(beams=1, max_new_tokens=12))
    assert [h[0].tokens for h in beam] == [h[0].tokens for h in greedy]
    assert min(len(h[0].tokens) for h in greedy) > 3


@pytest.mark.parametrize("beams", [2, 3])
def test_batched_beam_search_equals_one_by_one(beams):
    engine, beam = Engine(lively_tiny()), BeamParams(beams=beams, max_new_tokens=10, n_best=2)
    batched = engine.translate(SOURCES, START, END, GREEDY, beam)
    alone = [engine.translate([s], START, END, GREEDY, beam)[0] for s in SOURCES]
    assert [[h.tokens for h in hs] for hs in batched] == [[h.tokens for h in hs] for hs in alone]
    assert all(len(hs) == 2 and hs[0].score >= hs[1].score and len(hs[0].tokens) > 3 for hs in batched)


def table_model(table: dict[tuple[int, ...], dict[int, float]], vocab: int):
    """A next_logprobs callback over a hand-built table: prefix -> {token: probability}."""
    prefixes: list[tuple[int, ...]] = []

    def next_logprobs(tokens: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
        nonlocal prefixes
        if order is None:
            prefixes = [() for _ in tokens]
        else:
            prefixes = [prefixes[i] + (t,) for i, t in zip(order.tolist(), tokens.tolist())]
        out = torch.full((len(tokens), vocab), -1e9)
        for row, prefix in enumerate(prefixes):
            for token, p in table.get(prefix, {0: 1.0}).items():
                out[row, token] = torch.tensor(p).log()
        return out

    return next_logprobs


def test_beam_search_finds_the_best_sequence_that_greedy_misses():
    # token 0 ends. Greedy takes 1 (0.6) then 0.4 at best -> 0.24; the best sequence is 2 then end (0.4 * 0.9 = 0.36).
    table = {(): {1: 0.6, 2: 0.4}, (1,): {3: 0.4, 4: 0.3, 0: 0.3}, (2,): {0: 0.9, 3: 0.1}, (1, 3): {0: 1.0}}
    raw = BeamParams(beams=2, max_new_tokens=5, length_penalty=0.0, n_best=2)
    best = beam_search(table_model(table, 5), 1, start=0, end=0, params=raw)[0]
    assert best[0].tokens == [2] and best[0].score == pytest.approx(torch.tensor(0.36).log().item(), abs=1e-5)
    assert best[1].tokens == [1, 3] and best[1].score == pytest.approx(torch.tensor(0.24).log().item(), abs=1e-5)
    greedy = beam_search(table_model(table, 5), 1, 0, 0, BeamParams(beams=1, max_new_tokens=5, length_penalty=0.0))
    assert greedy[0][0].tokens == [1, 3]


def test_length_penalty_prefers_longer_hypotheses():
    # two ways to end: [2] (p 0.4) or [1, 3, 4] (0.6 * 0.8 * 0.8 = 0.384): raw sum picks the short one,
    # the per-token average (alpha = 1) the long one.
    table = {(): {1: 0.6, 2: 0.4}, (1,): {3: 0.8, 0: 0.2}, (2,): {0: 1.0}, (1, 3): {4: 0.8, 0: 0.2}, (1, 3, 4): {0: 1.0}}
    short = beam_search(table_model(table, 5), 1, 0, 0, BeamParams(beams=2, length_penalty=0.0, early_stopping=False))
    long = beam_search(table_model(table, 5), 1, 0, 0, BeamParams(beams=2, length_penalty=1.0, early_stopping=False))
    assert short[0][0].tokens == [2] and long[0][0].tokens == [1, 3, 4]


def test_no_repeat_ngram():
    assert _banned([1, 2, 3, 1, 2], 3) == {3}
    assert _banned([1, 2, 1], 2) == {2}
    assert _banned([1, 2], 0) == set()
    # "1 2 1 2" is the likeliest sequence, but it repeats the bigram "1 2"
    table = {(): {1: 1.0}, (1,): {2: 1.0}, (1, 2): {1: 0.9, 0: 0.1}, (1, 2, 1): {2: 0.9, 0: 0.1}}
    params = BeamParams(beams=2, length_penalty=0.0, early_stopping=False)
    free = beam_search(table_model(table, 3), 1, 0, 0, params)
    banned = beam_search(table_model(table, 3), 1, 0, 0, dataclasses.replace(params, no_repeat_ngram=2))
    assert free[0][0].tokens == [1, 2, 1, 2] and banned[0][0].tokens == [1, 2]


def test_learns_to_reverse_sequences_in_seconds():
    torch.manual_seed(0)
    vocab, end = 12, 0
    model = Seq2Seq(ModelConfig(kind="seq2seq", n_layer=2, n_encoder_layer=2, n_head=4, n_embd=64, block_size=16,
                                vocab_size=vocab, norm="rmsnorm", mlp="swiglu", position="rope", bias=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    steps = 500
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(0)

    def batch(n: int, length: int):
        src = torch.randint(1, vocab, (n, length), generator=generator)
        tgt = torch.cat([torch.zeros(n, 1, dtype=torch.long), src.flip(1), torch.zeros(n, 1, dtype=torch.long)], 1)
        return src, tgt

    model.train()
    for step in range(steps):
        src, tgt = batch(64, 3 + step % 4)
        logits = model(src, torch.ones_like(src, dtype=torch.bool), tgt[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), tgt[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    src, tgt = batch(100, 5)
    sources = [row.tolist() for row in src]
    outputs = Engine(model).translate(sources, end, end, SamplingParams(max_new_tokens=8, temperature=0))
    accuracy = sum(h[0].tokens == s[::-1] for s, h in zip(sources, outputs)) / len(sources)
    assert accuracy >= 0.9, accuracy
