"""The provider for OpenAI and OpenAI-compatible upstreams, through the openai SDK."""
