"""A BuildKit registry cache that survives between CI jobs."""

__version__ = "0.1.0"
