"""Merge methods: pure tensor functions registered by name (see ``registry``)."""

from mergebench.methods.registry import MergeMethod, Param, all_methods, get_method

__all__ = ["MergeMethod", "Param", "all_methods", "get_method"]
