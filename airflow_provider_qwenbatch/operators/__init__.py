"""Operators of the Qwen Batch provider."""
