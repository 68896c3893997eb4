"""Tests of the gateway package, mirroring its layout."""
