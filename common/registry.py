"""Name -> constructor registries: one per concept (operators, noise models, models, samplers, datasets).

A new task, model or sampler is one file that decorates its class with ``@REGISTRY.register("name")``
and one yaml that names it; nothing else needs to change.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of constructors with errors that list what is valid."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, *names: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Class decorator registering the constructor under one or more names."""

        def wrap(obj: Callable[..., T]) -> Callable[..., T]:
            for name in names:
                if name in self._entries:
                    raise KeyError(f"{self.kind} {name!r} is registered twice")
                self._entries[name] = obj
            return obj

        return wrap

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._entries[name]

    def build(self, name: str, **kwargs: Any) -> T:
        return self.get(name)(**kwargs)


OPERATORS: Registry = Registry("operator")
NOISES: Registry = Registry("noise model")
MODELS: Registry = Registry("model")
SAMPLERS: Registry = Registry("sampler")
DATASETS: Registry = Registry("dataset")


def import_submodules(package_name: str, package_path: list[str]) -> None:
    """Import every module of a package so that its registry decorators run (one file = one registered entry)."""
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
