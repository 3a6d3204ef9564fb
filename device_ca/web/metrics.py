"""Prometheus metrics (multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set, as under gunicorn)."""
from prometheus_client import Counter, Histogram

HTTP_REQUESTS = Counter("device_ca_http_requests_total", "HTTP requests by endpoint and status",
                        ["endpoint", "status"])
HTTP_SECONDS = Histogram("device_ca_http_request_seconds", "HTTP request latency by endpoint", ["endpoint"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
