"""Shared fixtures for the test suite and the benchmarks: tiny models, scenes, fake release files.

Packaged (unlike `tests/`) so that an installed `bench` can use them too.
"""
