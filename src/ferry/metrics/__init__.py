"""Prometheus metrics of serving processes (built-in and custom statistics) and Grafana dashboards."""

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (by ``ferry serve --workers N``) to a folder every worker writes its values to; one scrape sums them."""
