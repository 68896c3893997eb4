"""Logging and metrics: structlog set-up, Prometheus metrics, the live dashboard.

Imports the framer and the writer of gateway.streaming, nothing else of the gateway.
"""
