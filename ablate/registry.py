"""Name -> class registries: the only lists of mixers, tasks and evaluations.

A mixer, task or evaluation is one file that registers its class here with a decorator; code that
needs "every mixer" or "the task called X" asks the registry, never a list of its own. Configs
hold names (strings) so they stay serialisable. The packages ``ablate.mixers``, ``ablate.tasks``
and ``ablate.evaluate`` import every module they contain, so importing the package fills its
registry; a class defined elsewhere (a user's file, a test) registers when its module is imported.
"""

from __future__ import annotations

from collections.abc import Iterator

from ablate.config import ConfigError


class Registry:
    def __init__(self, what: str):
        self.what = what
        self._table: dict[str, type] = {}

    def register(self, name: str):
        """Class decorator: add the class under ``name`` and set ``cls.name`` to it."""

        def wrap(cls: type) -> type:
            if name in self._table:
                raise KeyError(f"{self.what} '{name}' is already registered to {self._table[name].__name__}")
            cls.name = name
            self._table[name] = cls
            return cls

        return wrap

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a toy class clean up with this)."""
        self._table.pop(name, None)

    def get(self, name: str) -> type:
        if name not in self._table:
            raise ConfigError(f"unknown {self.what} '{name}'; allowed: {', '.join(self.names())}")
        return self._table[name]

    def names(self) -> list[str]:
        return sorted(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


MIXERS = Registry("mixer")
TASKS = Registry("task")
EVALUATIONS = Registry("evaluation")


def import_submodules(package_name: str, package_path, skip: tuple[str, ...] = ()) -> None:
    """Import every module of a package but ``skip`` (its registrations run); called from its __init__."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(package_path):
        if info.name not in skip:
            importlib.import_module(f"{package_name}.{info.name}")
