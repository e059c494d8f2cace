"""The two errors of a local Flower deployment: a run that could not start or did not finish
(``deploy-local`` exits 1), and an input refused before any process starts (exit 2)."""

from __future__ import annotations


class DeployError(RuntimeError):
    """The federation could not be started, or the run did not finish successfully."""


class DeployInputError(DeployError, ValueError):
    """An input refused before any process starts: a bad number, a config that does not load,
    a rule or attack a deployment cannot run, an unsafe file or directory."""
