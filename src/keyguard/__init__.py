"""keyguard: an Envoy ext_authz sidecar for OpenAI/Anthropic-compatible LLM APIs."""

__version__ = "0.1.0"
