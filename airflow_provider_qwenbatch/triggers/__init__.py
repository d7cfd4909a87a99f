"""Triggers of the Qwen Batch provider."""
