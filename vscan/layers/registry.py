"""Sequence-mixer registry: a model asks for ``mixer='mamba'`` (or 'liquid', ...) by name.

Every mixer maps (batch, length, dim) -> (batch, length, dim) and takes ``dim`` as its first
argument; extra keywords go to its constructor.
"""
from __future__ import annotations

from typing import Callable

_MIXERS: dict[str, Callable] = {}


def register_mixer(name: str):
    def deco(cls):
        if name in _MIXERS and _MIXERS[name] is not cls:
            raise ValueError(f"mixer {name!r} is already registered to {_MIXERS[name].__name__}")
        _MIXERS[name] = cls
        return cls
    return deco


def list_mixers() -> list[str]:
    return sorted(_MIXERS)


def mixer_class(name: str) -> Callable:
    """The class registered under ``name`` (its signature says how to build and call it)."""
    if name not in _MIXERS:
        raise ValueError(f"mixer: unknown name {name!r}; registered mixers are {list_mixers()}")
    return _MIXERS[name]


def build_mixer(name: str, dim: int, **kwargs):
    return mixer_class(name)(dim, **kwargs)
