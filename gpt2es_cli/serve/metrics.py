"""The server's Prometheus metrics, served at /metrics in Prometheus's text format.

Each app has its own registry (several apps in one process, as in tests, do not mix their
counts). The engine's own figures (requests running and waiting, tokens generated) are read from
`engine.stats()` when /metrics is scraped, so they are never stale; the API counts requests by
endpoint and status, and records each completion's time to first token and latency.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The media type of the text format."""

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _EngineCollector:
    """Gauges and counters read from the engine at scrape time."""

    def __init__(self, stats: Callable[[], Any]):
        self.stats = stats

    def collect(self) -> Any:
        s = self.stats()
        for name, help_text, value in (
            ("gpt2es_running_sequences", "Requests being decoded now (in the batch).", s.running),
            ("gpt2es_queue_length", "Requests waiting for a place in the batch.", s.waiting),
            ("gpt2es_max_batch", "Requests decoded together at most.", s.max_batch),
            ("gpt2es_max_queue", "Requests that may wait at most.", s.max_queue),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)
        for name, help_text, value in (
            ("gpt2es_tokens_generated", "New tokens generated, all requests together.", s.tokens_generated),
            ("gpt2es_decode_steps", "Decode steps run (each decodes a token for every running request).", s.steps),
            ("gpt2es_prefills", "Prompts encoded (one per request admitted into the batch).", s.prefills),
        ):
            yield CounterMetricFamily(name, help_text, value=value)


class Metrics:
    """The counters and histograms of one app."""

    def __init__(self, stats: Callable[[], Any]):
        self.registry = CollectorRegistry()
        self.requests = Counter("gpt2es_requests", "HTTP requests by endpoint and status code.",
                                ("endpoint", "status"), registry=self.registry)
        self.completions = Counter("gpt2es_completions", "Completions (choices) by why they ended.",
                                   ("finish_reason",), registry=self.registry)
        self.prompt_tokens = Counter("gpt2es_prompt_tokens", "Prompt tokens read.", registry=self.registry)
        self.first_token = Histogram("gpt2es_time_to_first_token_seconds",
                                     "Seconds from a completion's submission to its first new token.",
                                     buckets=TTFT_BUCKETS, registry=self.registry)
        self.latency = Histogram("gpt2es_request_latency_seconds",
                                 "Seconds from a completion's submission to its end.",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(stats))

    def request(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    def finished(self, reason: str, first_token_seconds: float | None, seconds: float) -> None:
        """Record one completion's end (the engine's Finished)."""
        self.completions.labels(reason).inc()
        if first_token_seconds is not None:
            self.first_token.observe(first_token_seconds)
        self.latency.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
