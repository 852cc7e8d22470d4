"""Prometheus metrics of the workload server, under vLLM's names so any vLLM scraper reads them.

One registry per server (not the global default) so several servers can live in one process
(tests). Per-token latency is exported under the current vLLM name
(``vllm:inter_token_latency_seconds``) and, with identical observations, under the name older
vLLM releases used (``vllm:time_per_output_token_seconds``), so scrapers of either era read it.

Buckets are finer than vLLM's, sized for GPT-2 on a CPU: gaps between tokens of 20-200 ms and
first tokens of 50 ms to 30 s land in buckets about 10-25 % wide, so windowed quantiles
interpolated from them are good to a few percent. All times in seconds.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ITL_BUCKETS = (0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045, 0.05, 0.06, 0.07, 0.08,
               0.09, 0.1, 0.11, 0.12, 0.14, 0.16, 0.18, 0.2, 0.225, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6,
               0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
TTFT_BUCKETS = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4,
                0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.5, 10.0, 12.5, 15.0,
                20.0, 25.0, 30.0, 40.0, 60.0, 120.0, 300.0)
E2E_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0,
               7.5, 10.0, 12.5, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 90.0, 120.0, 240.0, 480.0,
               960.0)


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
        self.itl = Histogram("vllm:inter_token_latency_seconds",
                             "Gap between consecutive output tokens, seconds.", labels,
                             buckets=ITL_BUCKETS, registry=r)
        self.tpot = Histogram("vllm:time_per_output_token_seconds",
                              "Gap between consecutive output tokens, seconds (the name vLLM used "
                              "before inter_token_latency_seconds; same observations).", labels,
                              buckets=ITL_BUCKETS, registry=r)
        self.queue = Histogram("vllm:request_queue_time_seconds",
                               "Arrival to start of generation, seconds.", labels,
                               buckets=E2E_BUCKETS, registry=r)
        self.running = Gauge("vllm:num_requests_running", "Requests generating now.", labels,
                             registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests queued for a worker.",
                             labels, registry=r)
        self.success = Counter("vllm:request_success", "Finished sequences by finish reason "
                               "(stop, length, abort = the client went away).",
                               ["model_name", "finished_reason"], registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens prefilled (after any "
                                     "truncation the request asked for).", labels, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", labels,
                                         registry=r)
        self.rejected = Counter("autotune_workload_rejected", "Requests refused with 503 "
                                "because the queue was full.", labels, registry=r)
        self.threads = Gauge("autotune_workload_intra_op_threads", "torch intra-op threads each "
                             "inference worker uses for its next request.", labels, registry=r)
        self.model_name = model_name

    def labels(self, metric):  # noqa: ANN001, ANN201 - prometheus types are untyped
        return metric.labels(model_name=self.model_name)

    def token_gap(self, seconds: float) -> None:
        """One inter-token gap, under both names."""
        self.labels(self.itl).observe(seconds)
        self.labels(self.tpot).observe(seconds)
