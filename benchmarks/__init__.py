"""Benchmarks of the provider against the alternatives; one command each, see BENCHMARKS.md."""
