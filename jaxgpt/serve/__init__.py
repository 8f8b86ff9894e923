"""Serving a model over HTTP: an OpenAI-compatible API on continuous batching (`jaxgpt serve`)."""
