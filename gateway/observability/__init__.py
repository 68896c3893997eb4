"""Logging (and, later, metrics). Imports nothing else of the gateway."""
