"""Routing: the registry (model names to providers) and attempts (retries, fallbacks, timeouts).

Imports providers and config.
"""
