"""Fixtures for the admission tests: a real redis-server."""

from __future__ import annotations

from tests.support.redis_server import redis_server  # noqa: F401
