"""Runnable example models; each one is served by a test with `shoal serve`."""
