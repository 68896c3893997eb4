"""Shared by providers: the upstream SSE parser and Retry-After, the tokenizer."""
