"""Prometheus metrics of the server (``GET /metrics``), on a registry of its own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """Requests running and waiting, time to first token, inter-token and end-to-end latency, tokens, finish reasons."""

    def __init__(self, models):
        self.registry = registry = CollectorRegistry()
        running = Gauge("aigc_requests_running", "requests being decoded", ["model"], registry=registry)
        waiting = Gauge("aigc_requests_waiting", "requests queued for a slot", ["model"], registry=registry)
        # a gauge (not a counter) for the name it has always had; it only grows
        self.cancelled = Gauge("aigc_cancelled_sequences", "sequences stopped because the client went away, queued "
                               "or running (ever)", ["model"], registry=registry)
        hits = Gauge("aigc_prefix_cache_hit_rate", "share of prompt tokens whose keys and values were reused from "
                     "an earlier prompt", ["model"], registry=registry)
        held = Gauge("aigc_prefix_cache_bytes", "memory held by reusable prompt prefixes", ["model"], registry=registry)
        for model in models:
            running.labels(model.id).set_function(lambda m=model: m.worker.running)
            waiting.labels(model.id).set_function(lambda m=model: m.worker.queued)
            self.cancelled.labels(model.id)
            if model.prefix_cache is not None:
                hits.labels(model.id).set_function(lambda cache=model.prefix_cache: cache.hit_rate)
                held.labels(model.id).set_function(lambda cache=model.prefix_cache: cache.bytes)
        self.ttft = Histogram("aigc_time_to_first_token_seconds", "request start to first token", ["model"],
                              buckets=LATENCY_BUCKETS, registry=registry)
        self.itl = Histogram("aigc_inter_token_latency_seconds", "time between tokens of one request", ["model"],
                             buckets=LATENCY_BUCKETS, registry=registry)
        self.e2e = Histogram("aigc_request_latency_seconds", "request start to last token", ["model"],
                             buckets=LATENCY_BUCKETS, registry=registry)
        self.prompt_tokens = Counter("aigc_prompt_tokens", "prompt tokens processed", ["model"], registry=registry)
        self.generation_tokens = Counter("aigc_generation_tokens", "tokens generated", ["model"], registry=registry)
        self.finish = Counter("aigc_finished_sequences", "finished sequences by reason", ["model", "reason"],
                              registry=registry)

    def started(self, model: str, prompt_tokens: int) -> None:
        self.prompt_tokens.labels(model).inc(prompt_tokens)

    def token(self, model: str, first: float | None, gap: float | None) -> None:
        if first is not None:
            self.ttft.labels(model).observe(first)
        if gap is not None:
            self.itl.labels(model).observe(gap)

    def finished(self, model: str, reason: str, sequences: int = 1) -> None:
        """``reason``: stop, length, timeout, error, or cancelled (the client went away; also counted apart)."""
        self.finish.labels(model, reason).inc(sequences)
        if reason == "cancelled":
            self.cancelled.labels(model).inc(sequences)

    def completed(self, model: str, seconds: float, generated: int) -> None:
        self.e2e.labels(model).observe(seconds)
        self.generation_tokens.labels(model).inc(generated)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
