"""A name -> class table for an extension point (costs, gate kinds): raises on duplicates and
lists the valid names on a miss."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Classes registered by name; `attr` is the class attribute that receives the name."""

    def __init__(self, what: str, attr: str):
        self.what, self.attr = what, attr
        self._table: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._table:
                raise ValueError(f"{self.what} {name!r} is already registered")
            setattr(cls, self.attr, name)
            self._table[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        return sorted(self._table)

    def get(self, name: str) -> type[T]:
        try:
            return self._table[name]
        except KeyError:
            raise ValueError(f"unknown {self.what} {name!r}; choose one of {', '.join(self.names())}") from None
