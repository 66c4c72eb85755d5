"""Benchmarks behind ``cafe-dist bench ...``; results go to BENCHMARKS.md."""
