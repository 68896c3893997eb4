"""Logging and metrics: structlog set-up, Prometheus metrics, the live dashboard.

Imports the framer and writer of gateway.streaming and the static-file helpers of
gateway.http (for the dashboard page), nothing else of the gateway.
"""
