"""The engine server's Prometheus metrics (``prometheus-client``), one registry per server application.

Gauges that describe the present (queue length, jobs by state, images/s, GPU memory) are read when
``/metrics`` is scraped, through a custom collector; the rest are counters and histograms updated as jobs
move.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class ServerMetrics:
    def __init__(
        self,
        *,
        ready: Callable[[], bool],
        queue_length: Callable[[], int],
        jobs_by_state: Callable[[], dict[str, int]],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.images = Counter(
            "imaginebot_engine_images", "Images made by the engine.", registry=self.registry
        )
        self.cache_hits = Counter(
            "imaginebot_engine_cache_hits", "Jobs answered from the result cache.", registry=self.registry
        )
        self.cache_misses = Counter(
            "imaginebot_engine_cache_misses",
            "Cacheable jobs the cache could not answer (they ran on the engine).",
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "imaginebot_engine_queue_wait_seconds",
            "Time from submission to the start of generation.",
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.generation = Histogram(
            "imaginebot_engine_generation_seconds",
            "Wall time of one job on the engine (generation and encoding).",
            buckets=SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.webhooks = Counter(
            "imaginebot_engine_webhook_deliveries",
            "Webhook delivery attempts by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.processing_seconds = 0.0
        self.images_made = 0
        self.hits = self.misses = 0
        self.registry.register(_Live(self, ready, queue_length, jobs_by_state))

    def job_generated(self, images: int, seconds: float) -> None:
        self.images.inc(images)
        self.generation.observe(seconds)
        self.images_made += images
        self.processing_seconds += seconds

    def cache_answered(self, hit: bool) -> None:
        if hit:
            self.hits += 1
            self.cache_hits.inc()
        else:
            self.misses += 1
            self.cache_misses.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Live(Collector):
    def __init__(
        self,
        metrics: ServerMetrics,
        ready: Callable[[], bool],
        queue_length: Callable[[], int],
        jobs_by_state: Callable[[], dict[str, int]],
    ) -> None:
        self.metrics, self.ready, self.queue_length, self.jobs_by_state = (
            metrics,
            ready,
            queue_length,
            jobs_by_state,
        )

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "imaginebot_engine_ready", "1 once the model is loaded.", value=int(self.ready())
        )
        yield GaugeMetricFamily(
            "imaginebot_engine_queue_length", "Jobs waiting for an engine slot.", value=self.queue_length()
        )
        jobs = GaugeMetricFamily(
            "imaginebot_engine_jobs", "Jobs the server keeps, by state.", labels=["state"]
        )
        for state, count in sorted(self.jobs_by_state().items()):
            jobs.add_metric([state], count)
        yield jobs
        seconds = self.metrics.processing_seconds
        yield GaugeMetricFamily(
            "imaginebot_engine_images_per_second",
            "Images per second of generation time since the server started.",
            value=self.metrics.images_made / seconds if seconds else 0.0,
        )
        hits, misses = self.metrics.hits, self.metrics.misses
        yield GaugeMetricFamily(
            "imaginebot_engine_cache_hit_ratio",
            "Cache hits over cacheable jobs since the server started.",
            value=hits / (hits + misses) if hits + misses else 0.0,
        )
        torch = sys.modules.get("torch")  # only when the engine imported it; never import torch here
        if torch is not None and torch.cuda.is_available():
            memory = GaugeMetricFamily(
                "imaginebot_engine_gpu_memory_bytes", "CUDA memory of this process.", labels=["kind"]
            )
            memory.add_metric(["allocated"], torch.cuda.memory_allocated())
            memory.add_metric(["reserved"], torch.cuda.memory_reserved())
            memory.add_metric(["max_allocated"], torch.cuda.max_memory_allocated())
            yield memory
