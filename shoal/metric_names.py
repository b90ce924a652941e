"""Prometheus metric names: the one contract between the data plane (runtime, gateway) and the
control plane (autoscaler). Change a name here and nowhere else."""

from typing import Final

QUEUE_DEPTH: Final = "shoal_queue_depth"
INFLIGHT_REQUESTS: Final = "shoal_inflight_requests"
BATCH_SIZE: Final = "shoal_batch_size"
# Extra model calls spent isolating the bad rows of batches that raised (runtime/isolation.py).
BATCH_RETRIES_TOTAL: Final = "shoal_batch_retries_total"
REQUEST_DURATION_SECONDS: Final = "shoal_request_duration_seconds"
REQUESTS_TOTAL: Final = "shoal_requests_total"
# Gateway-side: requests held while a model has no ready replica (the scale-from-zero signal).
GATEWAY_HELD_REQUESTS: Final = "shoal_gateway_held_requests"
GATEWAY_OUTSTANDING_REQUESTS: Final = "shoal_gateway_outstanding_requests"
GATEWAY_RETRIES_TOTAL: Final = "shoal_gateway_retries_total"
GATEWAY_REQUESTS_TOTAL: Final = "shoal_gateway_requests_total"
GATEWAY_REQUEST_DURATION_SECONDS: Final = "shoal_gateway_request_duration_seconds"

# Latency histogram buckets (seconds), shared by replicas and the gateway so that their
# histograms can be compared and subtracted bucket by bucket.
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
