"""Beam search over any next-token distribution: batched, with length penalty, early stopping, n-best
and no-repeat n-grams.

The search only sees a callback ``next_logprobs(last_tokens, order)`` that returns log-probabilities
(N, V) for N = batch * beams live hypotheses, after reordering its own state (a KV cache) by ``order``
(N,), the index of the parent of each hypothesis. That keeps it independent of any model, and lets
the tests drive it with a hand-built probability table.

Scores are sums of log-probabilities; a finished hypothesis is ranked by score / length ** alpha
(``length_penalty`` alpha; 1.0 = average per token, 0 = raw sum, which favours short outputs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from aigc.errors import GenerationError


@dataclass(frozen=True)
class BeamParams:
    beams: int = 4
    max_new_tokens: int = 64
    length_penalty: float = 1.0
    early_stopping: bool = True
    n_best: int = 1
    no_repeat_ngram: int = 0

    def __post_init__(self) -> None:
        if self.beams < 1:
            raise GenerationError(f"beams must be at least 1, got {self.beams}")
        if not 1 <= self.n_best <= self.beams:
            raise GenerationError(f"n-best must be between 1 and the beam size ({self.beams}), got {self.n_best}")
        if self.max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.no_repeat_ngram < 0:
            raise GenerationError(f"no_repeat_ngram must be 0 (off) or more, got {self.no_repeat_ngram}")


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]
    score: float  # length-penalised


def _banned(history: list[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram already in ``history``."""
    if n <= 0 or len(history) < n - 1:
        return set()
    prefix = tuple(history[len(history) - n + 1 :]) if n > 1 else ()
    return {history[i + n - 1] for i in range(len(history) - n + 1) if tuple(history[i : i + n - 1]) == prefix}


def beam_search(
    next_logprobs: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    batch: int,
    start: int,
    end: int,
    params: BeamParams,
) -> list[list[Hypothesis]]:
    """The ``params.n_best`` best hypotheses per batch row (tokens exclude ``start`` and ``end``)."""
    K = params.beams
    tokens = torch.full((batch * K,), start, dtype=torch.long)
    scores = torch.zeros(batch, K)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep only one alive at first
    histories: list[list[int]] = [[] for _ in range(batch * K)]
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = [False] * batch
    order = None
    for step in range(params.max_new_tokens):
        logprobs = next_logprobs(tokens, order).float()  # (B*K, V)
        V = logprobs.shape[-1]
        if params.no_repeat_ngram:
            for row, history in enumerate(histories):
                for token in _banned(history, params.no_repeat_ngram):
                    logprobs[row, token] = float("-inf")
        candidates = (scores.view(-1, 1) + logprobs).view(batch, K * V)
        top_scores, top_index = candidates.topk(2 * K, dim=-1)  # (B, 2K): room for K that do not end
        new_tokens = torch.full((batch, K), end, dtype=torch.long)
        new_scores = torch.full((batch, K), float("-inf"))
        parents = torch.zeros(batch, K, dtype=torch.long)
        for b in range(batch):
            kept = 0
            for score, index in zip(top_scores[b].tolist(), top_index[b].tolist()):
                if kept == K or score == float("-inf"):
                    break
                parent, token = divmod(index, V)
                if done[b]:
                    break
                if token == end:
                    length = len(histories[b * K + parent]) + 1
                    finished[b].append(Hypothesis(histories[b * K + parent], score / length**params.length_penalty))
                    continue
                new_tokens[b, kept], new_scores[b, kept], parents[b, kept] = token, score, parent
                kept += 1
            if len(finished[b]) >= K and params.early_stopping:
                done[b] = True
            elif not params.early_stopping and finished[b]:
                # stop once no live beam can beat the worst kept hypothesis, even at its best length
                best_live = new_scores[b].max().item() / (len(histories[b * K]) + 1) ** params.length_penalty
                worst = sorted(h.score for h in finished[b])[-K:][0] if len(finished[b]) >= K else float("-inf")
                done[b] = len(finished[b]) >= K and best_live < worst
        if all(done):
            break
        order = (parents + torch.arange(batch)[:, None] * K).view(-1)
        histories = [histories[p] + [t] for p, t in zip(order.tolist(), new_tokens.view(-1).tolist())]
        tokens, scores = new_tokens.view(-1), new_scores
    for b in range(batch):
        if len(finished[b]) < params.n_best:  # ran out of steps: live beams count as they are
            for k in range(K):
                if scores[b, k] > float("-inf"):
                    history = histories[b * K + k]
                    finished[b].append(Hypothesis(history, scores[b, k].item() / max(len(history), 1) ** params.length_penalty))
    return [sorted(f, key=lambda h: h.score, reverse=True)[: params.n_best] for f in finished]
