"""Packages: everything under vscan/, plus the top-level kernels/ folder installed as vscan.kernels
(pyproject.toml maps the directory; package discovery alone cannot see that mapping)."""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["vscan", "vscan.*"]) + ["vscan.kernels"])
