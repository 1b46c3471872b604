"""Metadata lives in pyproject.toml; this shim lists the packages (the top-level
configs/ folder ships as vlft.configs) and keeps `python setup.py develop` working."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["vlft", "vlft.*"]) + ["vlft.configs"])
