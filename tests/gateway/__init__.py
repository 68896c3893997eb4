"""Tests for the ``gateway`` package, mirroring its layout."""
