"""Name -> class registry of mixers. Configs hold names (strings) so they stay serialisable."""

from __future__ import annotations

MIXERS: dict[str, type] = {}


def register(table: dict[str, type], name: str):
    def wrap(cls):
        if name in table:
            raise KeyError(f"'{name}' is already registered to {table[name].__name__}")
        table[name] = cls
        return cls

    return wrap


def lookup(table: dict[str, type], name: str, what: str):
    if name not in table:
        raise KeyError(f"unknown {what} '{name}'; known: {', '.join(sorted(table))}")
    return table[name]
