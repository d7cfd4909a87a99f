"""Hooks of the Qwen Batch provider."""
