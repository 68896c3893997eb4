"""tokenpipe: an OpenAI-compatible LLM token-streaming gateway."""

__version__ = "0.1.0"
