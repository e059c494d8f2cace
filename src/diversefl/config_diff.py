"""Configs in their full form (every rule and attack setting at its default written out, see
:func:`~diversefl.config.to_toml_dict`): where two of them differ, said the way a person reads
it (without the settings that only differ because the rule or the attack does), and overrides
that name another rule or attack without carrying the old one's defaults along."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

#: the sections whose own settings depend on the method (rule, attack) they name
_METHOD_SECTIONS = ("aggregator", "attack")


def config_differences(
    saved: Any, now: Any, prefix: str = "", names: tuple[str, str] = ("checkpoint", "now")
) -> list[str]:
    """Every key where two TOML-shaped dicts differ, as ``'seed: checkpoint 0, now 4'``
    (``names`` label the two sides)."""
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return [] if saved == now else [f"{prefix}: {names[0]} {saved!r}, {names[1]} {now!r}"]
    out: list[str] = []
    for key in sorted(set(saved) | set(now)):
        name = f"{prefix}.{key}" if prefix else key
        out += config_differences(saved.get(key, "unset"), now.get(key, "unset"), name, names)
    return out


def setting_differences(
    saved: dict[str, Any], now: dict[str, Any], names: tuple[str, str] = ("checkpoint", "now")
) -> list[str]:
    """:func:`config_differences` of two full-form configs, leaving out a setting that one
    side's rule (or attack) holds at its default and the other side's has no such setting:
    ``aggregator.name: checkpoint 'median', now 'diversefl'`` says it."""
    stated = config_differences(without_defaults(saved), without_defaults(now))
    keys = {d.split(":", 1)[0] for d in stated}
    every = config_differences(saved, now, names=names)
    return [d for d in every if d.split(":", 1)[0] in keys] or every


def without_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` (a TOML-shaped config) without the rule's and the attack's settings that are at
    their defaults; a section naming no registered method is kept as it is."""
    out = dict(raw)
    for section in _METHOD_SECTIONS:
        table = raw.get(section)
        defaults = _defaults(section, table.get("name") if isinstance(table, dict) else None)
        if isinstance(table, dict) and defaults is not None:
            out[section] = {k: v for k, v in table.items() if not _at_default(k, v, defaults)}
    return out


def drop_switched_defaults(before: Mapping[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``after`` (``before`` with overrides applied) without the settings its [aggregator] or
    [attack] kept from ``before`` when the overrides named another method that has no such
    setting, where they are only the old method's defaults: a run's config.toml writes every
    default out, and ``--set aggregator.name=median`` on it must not carry DiverseFL's eps1 to
    the median (a setting the old method had away from its default is still an error)."""
    for section in _METHOD_SECTIONS:
        old, new = before.get(section), after.get(section)
        if not (isinstance(old, Mapping) and isinstance(new, dict)):
            continue
        if old.get("name") == new.get("name"):  # the same method: its settings stay
            continue
        was, now = _defaults(section, old.get("name")), _defaults(section, new.get("name"))
        if was is None or now is None:
            continue
        after[section] = {
            k: v
            for k, v in new.items()
            if not (k in old and k not in now and _at_default(k, v, was) and old[k] == v)
        }
    return after


def _at_default(key: str, value: Any, defaults: Mapping[str, Any]) -> bool:
    """Whether ``value`` is ``key``'s default: equal, and of its type (``per_layer = 0`` is no
    boolean, so it is left for the rule to refuse)."""
    return key in defaults and type(value) is type(defaults[key]) and value == defaults[key]


def _defaults(section: str, name: Any) -> dict[str, Any] | None:
    """The settings with a default of the method ``name`` of ``section`` (None: no such)."""
    from diversefl.attacks import REGISTRY as ATTACKS
    from diversefl.methods import METHODS

    registry: Mapping[str, Any] = METHODS if section == "aggregator" else ATTACKS
    if not isinstance(name, str) or name not in registry:
        return None
    out = {}
    for f in dataclasses.fields(registry[name]):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out
