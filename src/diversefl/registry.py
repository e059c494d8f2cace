"""One registry kind for every named choice (aggregators, protocols, attacks, models, datasets,
partitions, schedules): a name -> entry mapping that builds entries with validated settings and
answers the config's questions ("which names are allowed?", "is this choice valid for n, f?")."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

import pydantic

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A config names an aggregator, attack, model, dataset, ... that does not exist."""


def close_hint(name: str, allowed: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the allowed name closest to a mistyped ``name`` (and any as
    close), or ``""`` when none is near: a typo's fix one glance away, before the full list."""
    scores = {c: difflib.SequenceMatcher(None, str(name), c).ratio() for c in allowed}
    best = max(scores.values(), default=0.0)
    if best < 0.6:
        return ""
    close = sorted((c for c, r in scores.items() if r >= best - 0.05), key=lambda c: -scores[c])
    return f" (did you mean {' or '.join(repr(c) for c in close[:3])}?)"


def unknown_name(where: str, kind: str, name: str, allowed: typing.Iterable[str]) -> str:
    """The message for a ``kind`` named ``name`` that is not one of ``allowed``."""
    names = sorted(allowed)
    return f"{where}: unknown {kind} {name!r}{close_hint(name, names)}; allowed: {', '.join(names)}"


class Registry(Mapping[str, T], Generic[T]):
    """Names of one kind mapped to their entries (a class or a factory function).

    ``registry[name]`` is a plain mapping lookup (KeyError); :meth:`lookup` and :meth:`build`
    raise :class:`UnknownNameError` listing the allowed names, which is what configs show.
    """

    def __init__(self, kind: str, entries: Mapping[str, T] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.register(name, entry)

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` (a second entry for one name is a programming error)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted (what error messages and docs list)."""
        return tuple(sorted(self._entries))

    def lookup(self, name: str, key: str | None = None) -> T:
        """The entry for ``name``; an unknown name names the config ``key`` and the choices."""
        if name not in self._entries:
            where = key or f"{self.kind}.name"
            raise UnknownNameError(unknown_name(where, self.kind, name, self.names()))
        return self._entries[name]

    def check_name(self, name: str, key: str | None = None) -> str:
        """``name`` itself when registered (a pydantic field validator's job), else the error."""
        self.lookup(name, key)
        return name

    def build(self, name: str, params: Mapping[str, Any] | None = None) -> Any:
        """The entry ``name`` built with its settings (unknown keys and bad types are errors)."""
        return build_validated(self.lookup(name), self.kind, name, dict(params or {}))

    def validate(
        self, name: str, params: Mapping[str, Any] | None = None, n: int | None = None,
        f: int | None = None,
    ) -> Any:  # fmt: skip
        """Build ``name`` and, when it has a client-count limit, check it for ``n`` clients of
        which ``f`` are Byzantine; returns the built entry."""
        obj = self.build(name, params)
        check = getattr(obj, "check", None)
        if n is not None and f is not None and callable(check):
            check(n, f)
        return obj


class CombinedRegistry(Registry[T]):
    """Several registries seen as one, live: an entry registered in a part after this was made
    is seen here too. :meth:`register` adds to the part ``route(entry)`` names (default the
    first)."""

    def __init__(
        self,
        kind: str,
        parts: typing.Sequence[Registry[Any]],
        route: typing.Callable[[Any], int] | None = None,
    ) -> None:
        self.kind = kind
        self._parts = tuple(parts)
        self._route = route or (lambda entry: 0)

    @property
    def _entries(self) -> dict[str, T]:
        out: dict[str, T] = {}
        for part in self._parts:
            out.update(part._entries)
        return out

    @_entries.setter
    def _entries(self, value: dict[str, T]) -> None:
        raise TypeError(f"{self.kind}: register entries in one of the combined registries")

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` to the part it belongs to (a name taken in any part is an error)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        return self._parts[self._route(entry)].register(name, entry)


def build_validated(cls: Any, kind: str, name: str, params: dict[str, Any]) -> Any:
    """Instantiate the dataclass ``cls(**params)``, validating types and rejecting unknown keys."""
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(params) - set(fields))
    if unknown:
        allowed = ", ".join(sorted(fields)) or "(none)"
        raise ValueError(
            f"{kind}.{unknown[0]}: unknown setting for {kind} {name!r}"
            f"{close_hint(unknown[0], fields)}; allowed: {allowed}"
        )
    if params:
        _check_strict(cls, kind, params)
    try:
        return _adapter(cls).validate_python(params)
    except pydantic.ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if key:
            raise ValueError(f"{kind}.{key}: {msg} (got {first.get('input')!r})") from None
        raise ValueError(f"{kind} {name!r}: {msg}") from None


def _check_strict(cls: Any, kind: str, params: dict[str, Any]) -> None:
    """Each setting checked in pydantic's strict mode before the (lax) dataclass build, as the
    config's own sections are: "0.5" is not a number, "yes" not a boolean, 2.0 not an int (an
    int is still a valid float)."""
    hints = typing.get_type_hints(cls)
    for key, value in params.items():
        try:
            _adapter(hints[key]).validate_python(value, strict=True)
        except pydantic.ValidationError as err:
            raise ValueError(f"{kind}.{key}: {_messages(err)} (got {value!r})") from None


def _messages(err: pydantic.ValidationError) -> str:
    """The errors of one setting as one phrase (:func:`join_messages`)."""
    return join_messages(e["msg"] for e in err.errors())


def join_messages(messages: typing.Iterable[str]) -> str:
    """Pydantic messages of one key as one phrase: a union's alternatives joined (``Input
    should be a valid number, or 'auto'``), so the message names every value that is allowed."""
    texts: list[str] = []
    for msg in messages:
        msg = msg.removeprefix("Value error, ")
        if msg not in texts:
            texts.append(msg)
    return texts[0] + "".join(", or " + t.removeprefix("Input should be ") for t in texts[1:])


@functools.cache
def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any]:
    """A validator for one setting's type or one registered class (cached: configs are
    validated often, and a sweep builds every cell's components: 1,338 cells took 4 s of
    adapter construction before)."""
    return pydantic.TypeAdapter(annotation)


def build(registry: Mapping[str, type], kind: str, name: str, params: dict[str, Any]) -> Any:
    """Instantiate ``registry[name](**params)`` with validated settings (kept for callers of
    the function form; :meth:`Registry.build` is the same)."""
    if name not in registry:
        raise UnknownNameError(unknown_name(f"{kind}.name", kind, name, registry))
    return build_validated(registry[name], kind, name, params)
