"""Sensors of the Qwen Batch provider."""
