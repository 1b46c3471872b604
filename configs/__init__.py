"""Shipped default YAMLs (installed as the vlft.configs package)."""
