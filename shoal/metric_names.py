"""Prometheus metric names: the one contract between the data plane (runtime, gateway) and the
control plane (autoscaler). Change a name here and nowhere else."""

from typing import Final

QUEUE_DEPTH: Final = "shoal_queue_depth"
INFLIGHT_REQUESTS: Final = "shoal_inflight_requests"
BATCH_SIZE: Final = "shoal_batch_size"
REQUEST_DURATION_SECONDS: Final = "shoal_request_duration_seconds"
REQUESTS_TOTAL: Final = "shoal_requests_total"
# Gateway-side: requests held while a model has no ready replica (the scale-from-zero signal).
GATEWAY_HELD_REQUESTS: Final = "shoal_gateway_held_requests"
GATEWAY_OUTSTANDING_REQUESTS: Final = "shoal_gateway_outstanding_requests"
GATEWAY_RETRIES_TOTAL: Final = "shoal_gateway_retries_total"
GATEWAY_REQUESTS_TOTAL: Final = "shoal_gateway_requests_total"
GATEWAY_REQUEST_DURATION_SECONDS: Final = "shoal_gateway_request_duration_seconds"
