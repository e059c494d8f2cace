"""The aggregator and attack references: every registered name with its class docstring, its
settings (the dataclass fields, their defaults and comments) and its client-count limit."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from refdocs.source import inherited_fields
from refdocs.text import DocsError, cell, code, doc_markdown, first_paragraph, toml_value

PROBE_F = (1, 2, 5)  # Byzantine counts for which the smallest allowed n is shown
_MAX_N = 200

AGGREGATORS_INTRO = """\
# Aggregators

Every name `[aggregator] name` accepts, generated from the registry
(`diversefl.methods.METHODS`: the gradient rules of `diversefl.aggregators.REGISTRY` and the
training protocols) when this site is built. A rule's settings go in the same table:

```toml
[aggregator]
name = "diversefl"
eps1 = 0.5
min_cosine = 0.5
```

or on the command line, `--set aggregator.min_cosine=0.5`. A setting the rule does not have, or
a value of the wrong type, is an error naming it. Every rule treats a malformed update (NaN,
infinity, an entry beyond 1e15 in magnitude, a row of the wrong length or dtype) as a rejected
client, never as a crash. The smallest federation a rule accepts is checked when the config
loads (and when the rule is called directly), for the number of Byzantine clients the rule
assumes (`attack.f`, or `aggregator.assumed_f`).

FoolsGold and FLDetector keep per-client state between rounds (keyed by client id, saved in
checkpoints); behind a pre-aggregator that mixes rows (bucketing) their state follows bucket
positions, not clients. FLDetector takes its model differences from the global model the
simulator passes each round; without it (a direct call, Flower) it uses its own negated
aggregates. CAF and SMEA compute exact eigenvalues (ByzFL uses one random power-method step);
SMEA searches every subset of n - f clients, about a second per round at n = 23, f = 5.
"""

ATTACKS_INTRO = """\
# Attacks

Every name `[attack] name` accepts, generated from `diversefl.attacks.REGISTRY` when this site
is built. An attack's settings go in the same table (`sigma = 1e4`) or on the command line
(`--set attack.sigma=1e4`); who attacks is set by `attack.f`, `attack.byzantine` and its
companions ([config reference](config.md#attack)). A *message* attack replaces what its
clients send and sees what an omniscient adversary would: every honest gradient of the round.
A *data* attack poisons its clients' training batches before their gradients are computed; the
one-time sample the server holds is always the client's true data. How the attacks relate to
DiverseFL's test: [the DiverseFL rule and its threat model](../concepts/diversefl.md).

Notes that hold for several attacks:

- The message attacks' statistics (ALIE's mean and spread, IPM's mean, Min-Max's and Min-Sum's
  mean and perturbation, the adaptive attack's target) are taken over the round's n − f honest
  gradients. Baruch et al. estimate them from the corrupted workers' own data instead: the same in
  expectation on IID shards, not on class-sorted or Dirichlet ones, where the attackers' own
  classes would bias them.
- Min-Sum's bound is the paper's equation (the largest honest sum of squared distances; the
  authors' code takes the smallest, a stricter bound). The Min-Max / Min-Sum search's
  `gamma_init` and `tol` are in units of `‖std‖ / ‖p‖`, so it finds the edge at any gradient
  scale.
- Label flip maps `c → c_n − 1 − c` (0↔9, 1↔8, ... on MNIST): the paper's `c → c_n − c` would map
  class 0 to a class that does not exist.
- The backdoor chooses its own Byzantine clients, exactly those holding source-class images
  (`attack.f` is ignored; the real count is in `summary.json`), and adds `main_accuracy` and
  `backdoor_accuracy` to `metrics.csv`.
- The trigger backdoors (`badnets`, `dba`) add `main_accuracy` (accuracy on the clean test set)
  and `backdoor_accuracy` (the attack-success rate: the share of test images whose true label is
  not `target` that the model classifies as `target` once the full trigger is stamped on them; a
  second test pass). They stamp images `[C, H, W]`; for flattened images set
  `image_shape = "1x28x28"`; tables are refused. `value` is in the model's input units (1.0 is a
  white MNIST pixel). A Flower server reports both when it holds a test set; with
  `test-set = "federated"` they are NaN (nodes report only counts and loss).
"""


def smallest_n(cls: type, f: int) -> int | None:
    """The smallest client count ``n`` the entry's own ``check(n, f)`` accepts (None: none up
    to a few hundred)."""
    entry = cls()
    for n in range(1, _MAX_N):
        try:
            entry.check(n, f)
        except ValueError:
            continue
        return n
    return None


def limit_text(cls: type) -> str:
    """The client-count limit as the entry's ``check`` enforces it, '' when it has none."""
    if not callable(getattr(cls, "check", None)):
        return ""
    mins = {f: smallest_n(cls, f) for f in PROBE_F}
    if all(n == 1 for n in mins.values()):
        return ""
    parts = [f"f = {f}: n >= {n}" if n else f"f = {f}: no n" for f, n in mins.items()]
    return "Client-count limit (from its check): " + ", ".join(parts) + "."


def settings_table(name: str, cls: type) -> list[str]:
    """The entry's settings as a table (setting, type, default, meaning); each row has the
    anchor ``name.setting``."""
    if not dataclasses.is_dataclass(cls):
        return []
    fields = [f for f in dataclasses.fields(cls) if f.init]
    if not fields:
        return ["No settings.", ""]
    sources = inherited_fields(cls)
    rows = ["| Setting | Type | Default | Meaning |", "|---|---|---|---|"]
    for f in fields:
        source = sources.get(f.name)
        annotation = source.annotation if source else str(f.type)
        default: Any = f.default if f.default is not dataclasses.MISSING else "required"
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        rows.append(
            f'| <a id="{name}.{f.name}"></a>{code(f.name)} | {cell(code(annotation))} '
            f"| {cell(code(toml_value(default)))} | {cell(source.comment if source else '')} |"
        )
    return rows + [""]


def flags(kind: str, cls: type) -> list[str]:
    """What the simulator and the Flower deployment know about the entry, in words."""
    said = []
    if getattr(cls, "needs_guiding", False):
        said.append("computes a guiding gradient on each client's one-time sample")
    if getattr(cls, "attack_invariant", False):
        said.append("never reads a Byzantine update, so one attacked run stands for every attack")
    if kind == "attack":
        from diversefl.attacks.base import Attack

        data = cls.poison is not Attack.poison
        said.append("data attack (poisons the batches)" if data else "message attack")
        if not getattr(cls, "uses_own_gradients", True):
            said.append("ignores its clients' own gradients (the simulator skips computing them)")
        if getattr(cls, "needs_other_clients", False):
            said.append("built from the other clients' updates: refused by the Flower deployment")
    return said


def _is_protocol(cls: type) -> bool:
    """Whether the entry is a training protocol (RSA) rather than a gradient rule."""
    from diversefl.protocols import Protocol

    return issubclass(cls, Protocol)


def entry_text(kind: str, name: str, cls: type) -> list[str]:
    """One entry's section: heading, docstring, properties, limit, settings."""
    doc = doc_markdown(cls)
    if _is_protocol(cls):  # a protocol's module describes it; its class holds the settings
        doc = "\n\n".join(p for p in (doc_markdown(sys.modules[cls.__module__]), doc) if p)
    if not doc:
        raise DocsError(f"{kind} {name!r} ({cls.__module__}.{cls.__name__}) has no docstring")
    lines = [f"## `{name}` {{#{name}}}", "", doc, ""]
    props = flags(kind, cls)
    limit = limit_text(cls)
    if props:
        text = "; ".join(props)
        lines += [f"*{text[0].upper()}{text[1:]}.*", ""]
    if limit:
        lines += [limit, ""]
    return lines + settings_table(name, cls)


def summary_table(kind: str, registry: Any) -> list[str]:
    """One line per name: the docstring's first paragraph."""
    rows = [f"| `{kind}.name` | What it does |", "|---|---|"]
    for name in registry.names():
        cls = registry[name]
        source = sys.modules[cls.__module__] if _is_protocol(cls) else cls
        rows.append(f"| [{code(name)}](#{name}) | {cell(first_paragraph(doc_markdown(source)))} |")
    return rows + [""]


def registry_page(kind: str, registry: Any, intro: str) -> str:
    """A whole reference page for one registry."""
    lines = [intro, *summary_table(kind, registry)]
    for name in registry.names():
        lines += entry_text(kind, name, registry[name])
    return "\n".join(lines)


def aggregators_page() -> str:
    """Every rule and protocol ``[aggregator] name`` accepts."""
    from diversefl.methods import METHODS

    return registry_page("aggregator", METHODS, AGGREGATORS_INTRO)


def attacks_page() -> str:
    """Every attack ``[attack] name`` accepts."""
    from diversefl.attacks import REGISTRY

    return registry_page("attack", REGISTRY, ATTACKS_INTRO)
