"""Fixture builders for tests, benchmarks and `gpt2hub demo`: releases in OpenAI's layout, a trained BPE, a loopback server."""
