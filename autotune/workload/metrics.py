"""Prometheus metrics of the workload server, under vLLM's names so any vLLM scraper reads them.

One registry per server (not the global default) so several servers can live in one process
(tests). Buckets follow vLLM's, extended at the slow end because a CPU-bound GPT-2 under a
half-core quota takes tens of seconds per request. All times in seconds.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0)
TPOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
               50.0, 60.0, 120.0, 240.0, 480.0, 960.0)


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        r, labels = self.registry, ["model_name"]
        self.e2e = Histogram("vllm:e2e_request_latency_seconds",
                             "Arrival to last token, seconds (includes queueing).", labels,
                             buckets=E2E_BUCKETS, registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds",
                              "Arrival to first token, seconds (includes queueing).", labels,
                              buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("vllm:time_per_output_token_seconds",
                              "Gap between consecutive output tokens, seconds.", labels,
                              buckets=TPOT_BUCKETS, registry=r)
        self.queue = Histogram("vllm:request_queue_time_seconds",
                               "Arrival to start of generation, seconds.", labels,
                               buckets=E2E_BUCKETS, registry=r)
        self.running = Gauge("vllm:num_requests_running", "Requests generating now.", labels,
                             registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests queued for a worker.",
                             labels, registry=r)
        self.success = Counter("vllm:request_success", "Finished requests.",
                               ["model_name", "finished_reason"], registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", labels,
                                     registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", labels,
                                         registry=r)
        self.rejected = Counter("autotune_workload_rejected", "Requests refused with 503 "
                                "because the queue was full.", labels, registry=r)
        self.model_name = model_name

    def labels(self, metric):  # noqa: ANN001, ANN201 - prometheus types are untyped
        return metric.labels(model_name=self.model_name)
