"""Tests for ``gateway.admission``."""
