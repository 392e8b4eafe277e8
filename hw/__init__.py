"""Amaranth generators of the zipsgd engine."""
