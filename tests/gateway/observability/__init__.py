"""Tests of gateway.observability: metrics and the live dashboard."""
