"""Every setting of a run, validated: unknown keys and bad values fail before training starts,
with an error naming the key and what is allowed."""

from __future__ import annotations

import copy
import datetime
import re
import tomllib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")  # what the engine is built and tested for


def parse_device(device: str) -> Any:
    """``torch.device(device)`` for a supported type (cpu, cuda, cuda:N); a ValueError naming
    the value for a typo or for a type torch knows but diversefl does not run on (mps, meta)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{device!r} is not a torch device (cpu, cuda, cuda:1)") from None
    if dev.type not in SUPPORTED_DEVICE_TYPES:
        raise ValueError(
            f"{device!r} is not supported: diversefl runs on cpu or cuda (cuda, cuda:1, ...)"
        )
    return dev


class _Section(BaseModel):
    # strict: a string is not a number or a boolean ("3", "yes"), 1 is not true, 3.0 is not an
    # int; an int is still a valid float (lr = 1)
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, allow_inf_nan=False, strict=True
    )

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, v: Any, info: pydantic.ValidationInfo) -> Any:
        """TOML's true/false are not 1/0: a boolean is only accepted where one is expected."""
        if isinstance(v, bool) and info.field_name is not None:
            ann = cls.model_fields[info.field_name].annotation
            if ann is not bool and bool not in get_args(ann):
                raise ValueError(f"expected a number or a name, got the boolean {str(v).lower()}")
        return v


class DataConfig(_Section):
    """Which dataset and how it is split across clients."""

    dataset: str = "mnist"  # a name in diversefl.data.DATASETS
    partition: str = "sorted"  # a name in diversefl.data.PARTITIONS (paper: sorted)
    alpha: float = Field(0.5, gt=0)  # Dirichlet concentration (partition = "dirichlet")
    # dataset = "files": your own data (diversefl.data.files.load_files). Unset keys are left
    # out of config.toml and take the defaults in the comments.
    path: str | None = None  # a .npz / .csv / .parquet file, an image folder, or a folder of them
    # how to read data.path: "npz", "csv", "parquet", "images" (a folder of class folders), or
    # "auto" (the default when unset): from the file extension or the folder's contents
    format: Literal["auto", "npz", "csv", "parquet", "images"] | None = None
    # "pool": one dataset that data.partition splits; "per-client": a folder with one file or
    # image folder per client (needs partition = "natural"); "auto" (default): from data.path
    layout: Literal["auto", "pool", "per-client"] | None = None
    label: str | None = None  # the label column of a table ("label")
    test_path: str | None = None  # a separate test set in the same format
    test_fraction: float | None = Field(None, gt=0, lt=1)  # held out per file (0.2)
    # standardise table features: true (the training pool's mean/std), "samples" (the mean/std
    # of the clients' one-time samples, which the server holds anyway: what a deployed
    # federation can agree on), "client" (each client's own rows'), false. Default true; a
    # deployed federation of tables must choose "samples", "client" or false.
    standardize: bool | Literal["client", "samples"] | None = None
    # the classes: a count, or names in index order (default: the labels seen in the data).
    # A deployed federation must declare them: each node sees only its own labels.
    classes: int | list[str] | None = None

    @model_validator(mode="after")
    def _files_need_a_path(self) -> DataConfig:
        keys = ("path", "format", "layout", "label", "test_path", "test_fraction", "standardize",
                "classes")  # fmt: skip
        given = [k for k in keys if getattr(self, k) is not None]
        if self.dataset == "files" and not self.path:
            raise ValueError("data.path: dataset = 'files' reads your files: set data.path")
        if self.dataset != "files" and given:
            raise ValueError(f"data.{given[0]}: only for dataset = 'files' (got {self.dataset!r})")
        c = self.classes
        if isinstance(c, int) and c < 1 or isinstance(c, list) and len(set(c)) != len(c) or c == []:
            raise ValueError(f"data.classes: a count >= 1 or distinct names, got {c!r}")
        return self

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        from diversefl.data.datasets import DATASETS

        return DATASETS.check_name(v, "data.dataset")

    @field_validator("partition")
    @classmethod
    def _known_partition(cls, v: str) -> str:
        from diversefl.data.partition import PARTITIONS

        return PARTITIONS.check_name(v, "data.partition")


class ModelConfig(_Section):
    """Which network to train."""

    name: str = "softmax"  # a name in diversefl.models.MODELS
    hidden: list[int] | None = None  # name = "mlp": widths of the hidden layers ([200, 200])
    # "package.module:function" returning an nn.Module for (input_shape, num_classes); it
    # replaces `name`. Importing it runs that module's code: name only code you trust.
    factory: str | None = None

    @model_validator(mode="after")
    def _settings_fit_the_model(self) -> ModelConfig:
        if self.hidden is not None and self.factory:
            raise ValueError(
                f"model.hidden: the widths of the built-in mlp, but model.factory = "
                f"{self.factory!r} builds the whole network; remove model.hidden from the config"
            )
        if self.hidden is not None and self.name != "mlp":
            raise ValueError(f"model.hidden: only for name = 'mlp' (got {self.name!r})")
        if self.hidden is not None and (not self.hidden or min(self.hidden) < 1):
            raise ValueError(f"model.hidden: layer widths must be >= 1, got {self.hidden}")
        return self

    @field_validator("name")
    @classmethod
    def _known_model(cls, v: str) -> str:
        from diversefl.models import MODELS

        return MODELS.check_name(v, "model.name")


class ClientsConfig(_Section):
    """The federation: how many clients, their batch and the one-time shared sample."""

    n: int = Field(23, ge=1)  # number of clients (the paper: 23)
    batch: int | float = 300  # examples per round: an int, or a fraction of the shard (0.1)
    sample: int | float = 30  # one-time sample shared with the server: int or fraction
    # "mean": gradient of the mean batch loss (eq. 3); "sum": of the summed loss, i.e. m times
    # larger (the softmax-regression preset: see README "Figures and paper reproduction")
    loss: Literal["mean", "sum"] = "mean"
    # FedAvg: local SGD steps per round from the global model, each on a fresh mini-batch; the
    # client sends (theta - theta_E) / local_lr. 1: FedSGD, one gradient (the paper's)
    local_steps: int = Field(1, ge=1)
    # or local epochs: client j takes ceil(local_epochs * shard_j / batch_j) steps (unset: off)
    local_epochs: float | None = Field(None, gt=0)
    # the clients' local SGD step size (unset: the server's lr of the round, after the schedule)
    local_lr: float | None = Field(None, gt=0)

    @field_validator("batch", "sample")
    @classmethod
    def _positive(cls, v: int | float) -> int | float:
        if isinstance(v, float) and not 0 < v <= 1:
            raise ValueError(f"a fraction must be in (0, 1], got {v}")
        if isinstance(v, int) and v < 1:
            raise ValueError(f"a count must be >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _one_local_length(self) -> ClientsConfig:
        if self.local_epochs is not None and self.local_steps > 1:
            raise ValueError(
                f"local_epochs = {self.local_epochs} and local_steps = {self.local_steps}: "
                "set one of them (local_epochs gives each client its own step count)"
            )
        return self


class OptimConfig(_Section):
    """Server step ``theta <- theta - lr_r (aggregate + weight_decay * theta)``."""

    lr: float = Field(0.001, gt=0)  # the server's learning rate (mu in eq. 4), before the schedule
    schedule: str = "inv_sqrt"  # a name in diversefl.engine.schedules.SCHEDULES
    weight_decay: float = Field(0.0067, ge=0)  # L2 penalty lambda (eq. 2), added in every step
    milestones: list[int] = []  # rounds after which lr is multiplied by gamma
    gamma: float = Field(0.1, gt=0)  # step / warmup_step: the factor applied at each milestone
    warmup_rounds: int = Field(0, ge=0)  # warmup_step: rounds of linear warmup to lr
    warmup_start_lr: float = Field(0.0, ge=0)  # warmup_step: the learning rate of round 1
    # heavy-ball momentum on the aggregate: v <- m v + aggregate, the step uses v (0: plain)
    server_momentum: float = Field(0.0, ge=0, lt=1)

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, v: str) -> str:
        from diversefl.engine.schedules import SCHEDULES

        return SCHEDULES.check_name(v, "optim.schedule")

    @field_validator("milestones")
    @classmethod
    def _rounds(cls, v: list[int]) -> list[int]:
        bad = [m for m in v if m < 1]
        if bad:
            raise ValueError(f"milestones are rounds (>= 1), got {bad[0]}")
        return v

    @model_validator(mode="after")
    def _milestones_after_warmup(self) -> OptimConfig:
        early = [m for m in self.milestones if m < self.warmup_rounds]
        if self.schedule == "warmup_step" and early:
            raise ValueError(
                f"milestones: {early[0]} falls inside the warmup (warmup_rounds = "
                f"{self.warmup_rounds}), where the step schedule does not apply yet"
            )
        return self


class AttackConfig(_Section):
    """Who is Byzantine and what they send; extra keys are the attack's own settings."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)
    name: str = "none"  # a name in diversefl.attacks.REGISTRY: what the Byzantine clients send
    f: int = Field(5, ge=0)  # Byzantine clients; with name = "none", what the defenses assume
    # which clients attack: "seeded" (f ids drawn once from the seed), "per_round" (redrawn
    # every round) or a list of client ids (f is then their count)
    byzantine: Literal["seeded", "per_round"] | list[int] = "seeded"
    # Seed of the "seeded" draw (default: the run's seed). Fixing it keeps one Byzantine
    # placement across run seeds, so seeds vary only the training randomness.
    byzantine_seed: int | None = Field(None, ge=0)
    # With a list of ids: this many more Byzantine clients drawn (seeded) among the others.
    also_seeded: int = Field(0, ge=0)

    def params(self) -> dict[str, Any]:
        """The attack-specific settings (everything but name, f, byzantine, ...)."""
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _f_follows_the_list(self) -> AttackConfig:
        """With listed ids, ``f`` is their count (plus ``also_seeded``), so that config.toml
        says how many attack; an explicit ``f`` that disagrees gets a warning, not silence."""
        if isinstance(self.byzantine, list):
            count = len(self.byzantine) + self.also_seeded
            if self.f != count:
                if "f" in self.model_fields_set:
                    warnings.warn(
                        f"attack.f = {self.f}, but attack.byzantine lists {len(self.byzantine)} "
                        f"ids (also_seeded {self.also_seeded}): {count} clients attack, and "
                        f"attack.f is taken as {count}",
                        stacklevel=1,
                    )
                self.__dict__["f"] = count  # no re-validation: it is the list's count
        return self


class AggregatorConfig(_Section):
    """The server's rule; extra keys are the rule's own settings (e.g. eps1, eps2)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, allow_inf_nan=False)
    name: str = "mean"  # a name in diversefl.methods.METHODS: the rule or protocol
    # Byzantine clients the rule assumes (RoundContext.f). Default: the real count under an
    # attack, attack.f without one. Set it to study a misjudged f, or in a deployment.
    assumed_f: int | None = Field(None, ge=0)
    # pre-aggregators run in order before the rule: names or tables with a name and settings,
    # e.g. ["nnm"] or [{name = "bucketing", s = 2}] (diversefl.aggregators.pre.PRE; none)
    pre: list[str | dict[str, Any]] | None = None

    @field_validator("pre")
    @classmethod
    def _known_stages(cls, v: list[str | dict[str, Any]] | None) -> Any:
        from diversefl.aggregators.pre import build_stages

        build_stages(v)
        return v or None

    def params(self) -> dict[str, Any]:
        """The aggregator-specific settings."""
        return dict(self.model_extra or {})


class EvalConfig(_Section):
    """How often to test, checkpoint and record per-client decisions."""

    every: int = Field(10, ge=1)  # evaluate on the test set every k rounds (and the last)
    checkpoint_every: int = Field(50, ge=1)  # rounds between checkpoints
    batch: int = Field(2000, ge=1)  # test-set batch size
    decisions: bool = True  # write decisions.csv (round, client, byzantine, accepted, scores)


class EngineConfig(_Section):
    """Where and how the batched tensor work runs."""

    device: str = "cpu"  # where the run computes: cpu, cuda or cuda:N
    clients_per_chunk: int = Field(0, ge=0)  # clients per batched call, to bound memory (0: all)
    # per-client gradients: "dense" = hand-written backward for Flatten/Linear/ReLU models,
    # "vmap" = torch.func for any model, "auto" = dense where it applies (same gradients up to
    # float rounding; "vmap" reproduces runs made before the dense path existed digit for digit)
    grads: Literal["auto", "vmap", "dense"] = "auto"

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        """A device type diversefl runs on (cpu, cuda, cuda:N); whether this machine has it
        is checked when the simulation is built (engine.devices.usable_device)."""
        parse_device(v)
        return v


def _check_not_pipeline(name: str) -> None:
    """A leaderboard's pipeline label (``nnm+krum``) given as ``aggregator.name``: a ValueError
    that spells out the config form (pre-aggregators in ``aggregator.pre``, the rule in
    ``aggregator.name``) instead of "unknown aggregator"."""
    from diversefl.aggregators.pipeline_name import SEPARATOR

    if SEPARATOR not in name:
        return
    *stages, rule = name.split(SEPARATOR)
    pre = "[" + ", ".join(f'"{s}"' for s in stages) + "]"
    raise ValueError(
        f"aggregator.name: {name!r} is a pipeline's label; a config names its parts: "
        f'aggregator.pre = {pre} and aggregator.name = "{rule}" (on the command line: '
        f"--set 'aggregator.pre={pre}' --set aggregator.name={rule})"
    )


class Config(_Section):
    """A full run: what `diversefl run` reads from TOML and writes back as config.toml."""

    name: str = ""  # run name, one safe path component; the run directory: runs/<name>-<time>
    seed: int = Field(0, ge=0, lt=2**63)  # every random stream is keyed by it
    rounds: int = Field(1000, ge=1)  # training rounds (one server step each)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    clients: ClientsConfig = ClientsConfig()
    optim: OptimConfig = OptimConfig()
    attack: AttackConfig = AttackConfig()
    aggregator: AggregatorConfig = AggregatorConfig()
    eval: EvalConfig = EvalConfig()
    engine: EngineConfig = EngineConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        """The name becomes a directory name (runs/<name>-<time>, a Flower run's output): it
        may not reach outside runs/ (see :func:`check_run_name`)."""
        return check_run_name(v)

    @model_validator(mode="after")
    def _check_components(self) -> Config:
        # Imported here: the registries import torch-heavy modules; config stays light.
        from diversefl.attacks import REGISTRY as ATTACKS
        from diversefl.methods import METHODS

        _check_not_pipeline(self.aggregator.name)
        rule = METHODS.validate(self.aggregator.name, self.aggregator.params())  # settings only
        ATTACKS.validate(self.attack.name, self.attack.params())
        f = self.byzantine_count()
        if f >= self.clients.n and self.attack.name != "none":
            raise ValueError(f"attack.f: f={f} must be smaller than clients.n={self.clients.n}")
        if isinstance(self.attack.byzantine, list):
            bad = [i for i in self.attack.byzantine if not 0 <= i < self.clients.n]
            if bad:
                raise ValueError(
                    f"attack.byzantine: client ids {bad} outside 0..{self.clients.n - 1}"
                )
            if len(set(self.attack.byzantine)) != len(self.attack.byzantine):
                raise ValueError("attack.byzantine: duplicate client ids")
        elif self.attack.also_seeded:
            raise ValueError(
                "attack.also_seeded: only with a list of ids in attack.byzantine "
                f"(got byzantine = {self.attack.byzantine!r}; use attack.f instead)"
            )
        assumed = self.assumed_f()
        try:  # the rule's client-count limit for n clients, `assumed` of them Byzantine
            rule.check(self.clients.n, assumed)
        except ValueError as err:
            if self.aggregator.assumed_f is not None:
                raise ValueError(f"aggregator.assumed_f = {assumed}: {err}") from None
            if self.attack.name != "none":
                raise
            raise ValueError(
                f"{err}. Without an attack the defense still assumes attack.f = {assumed} "
                "Byzantine clients; set attack.f or aggregator.assumed_f for the f it should "
                "assume (0: nobody)"
            ) from None
        return self

    @model_validator(mode="after")
    def _default_searched_rule(self) -> Config:
        """An attack that tunes itself against the server's rule (``searches_rule``, e.g.
        alie_opt) and leaves ``attack.rule`` unset tunes against this run's aggregator, its
        pre-aggregators included (``nnm+krum``); set here, so config.toml records it."""
        from diversefl.attacks import REGISTRY as ATTACKS
        from diversefl.attacks.rule_search import default_rule

        extra = self.attack.model_extra
        searches = getattr(ATTACKS.get(self.attack.name), "searches_rule", False)
        if searches and extra is not None and "rule" not in extra:
            agg = self.aggregator
            extra["rule"] = default_rule(self.attack.name, agg.name, agg.pre)
        return self

    def byzantine_count(self, atk: Any = None) -> int:
        """How many clients are Byzantine in this run (0 without an attack)."""
        if self.attack.name == "none":
            return 0
        return self._configured_f()

    def _configured_f(self) -> int:
        """The attack section's count: the listed ids (plus seeded extras), or ``f``."""
        if isinstance(self.attack.byzantine, list):
            return len(self.attack.byzantine) + self.attack.also_seeded
        return self.attack.f

    def assumed_f(self, real: int | None = None) -> int:
        """How many Byzantine clients the defense is told to expect (``RoundContext.f``):
        ``aggregator.assumed_f`` when set; else the ``real`` count under an attack (when the
        caller knows it, e.g. the backdoor's source-class owners) or the configured one, also
        without an attack. A server cannot know that nobody attacks, so Krum, Bulyan and the
        trimmed means keep trimming f updates and pay for it in peacetime; the paper's
        no-attack panels are run this way (its Bulyan "oscillates" without an attack, which
        it would not as the plain mean it becomes with f = 0)."""
        if self.aggregator.assumed_f is not None:
            return self.aggregator.assumed_f
        if real is not None and self.attack.name != "none":
            return real
        return self._configured_f()


def first_difference(saved: Any, other: Any, other_name: str = "now", prefix: str = "") -> str:
    """The first key where two TOML-shaped dicts differ, as ``'rounds: saved 400, now 450'``;
    '' when they are equal."""
    if isinstance(saved, dict) and isinstance(other, dict):
        for key in sorted(set(saved) | set(other)):
            name = f"{prefix}.{key}" if prefix else key
            if key not in saved or key not in other:
                return (
                    f"{name}: saved {saved.get(key, 'unset')!r}, "
                    f"{other_name} {other.get(key, 'unset')!r}"
                )
            found = first_difference(saved[key], other[key], other_name, name)
            if found:
                return found
        return ""
    return "" if saved == other else f"{prefix}: saved {saved!r}, {other_name} {other!r}"


def _format_error(err: pydantic.ValidationError) -> str:
    """One line per bad key, ``key: what is wrong (got value)``; the alternatives of a union
    (``int | float``) are one line, not one per alternative."""
    groups: dict[str, list[Any]] = {}
    for e in err.errors():
        groups.setdefault(_error_key(e["loc"]), []).append(e)
    lines = [_error_line(key, errors) for key, errors in groups.items()]
    return "invalid config:\n  " + "\n  ".join(lines)


def _error_key(loc: tuple[int | str, ...]) -> str:
    """The config key an error location names (``optim.milestones[0]``), without pydantic's
    tags for union members and validators (``int``, ``list[int]``, ``function-after[...]``)."""
    section: Any = Config
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            if parts:
                parts[-1] += f"[{part}]"
            continue
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            continue  # below a setting: a tag, not a key
        field = section.model_fields.get(part)
        parts.append(part)
        section = field.annotation if field is not None else None  # None: an unknown key
    return ".".join(parts)


def _error_line(key: str, errors: list[Any]) -> str:
    """``key: message (got value)`` for the errors of one key."""
    from diversefl.registry import join_messages

    text = join_messages(
        "unknown key" if e["type"] == "extra_forbidden" else e["msg"] for e in errors
    )
    shown = [e for e in errors if e["type"] not in ("value_error", "extra_forbidden")]
    if shown and "input" in shown[0]:
        text = f"{text} (got {shown[0]['input']!r})"
    if not key or text.startswith(f"{key}:"):  # a registry's message names the key itself
        return text
    return f"{key}: {text}"


def _allowed_keys_hint(err: pydantic.ValidationError) -> str:
    """For an unknown key, the keys its section allows."""
    hints = []
    for e in err.errors():
        if e["type"] != "extra_forbidden":
            continue
        section: Any = Config
        for part in e["loc"][:-1]:
            field = section.model_fields.get(str(part))
            section = field.annotation if field is not None else None
            if not (isinstance(section, type) and issubclass(section, BaseModel)):
                break
        else:
            hints.append(f"allowed keys here: {', '.join(section.model_fields)}")
    return ("\n  " + "\n  ".join(hints)) if hints else ""


def make_config(raw: dict[str, Any]) -> Config:
    """Validate a nested dict into a :class:`Config`, raising :class:`ConfigError`."""
    try:
        return Config.model_validate(raw)
    except pydantic.ValidationError as err:
        raise ConfigError(_format_error(err) + _allowed_keys_hint(err)) from None
    except ValueError as err:  # registry errors raised from inside validators
        raise ConfigError(f"invalid config:\n  {err}") from None


_RUN_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")
RUN_NAME_MAX = 128


def check_run_name(name: str) -> str:
    """``name`` when it is a safe run name, else a ValueError: empty, or one path component of
    ASCII letters, digits, ``- _ + .``, not starting with ``.`` and without ``..``, at most
    :data:`RUN_NAME_MAX` characters (it names a directory under runs/)."""
    if name == "" or (len(name) <= RUN_NAME_MAX and _RUN_NAME.fullmatch(name) and ".." not in name):
        return name
    raise ValueError(
        f"{name!r} is not a safe run name: it names the run directory, so it is one path "
        "component of letters, digits, '-', '_', '+' and '.', not starting with '.', without "
        f"'..', at most {RUN_NAME_MAX} characters"
    )


# krum, fashion-mnist, cuda:1: a string; whitespace, '#', quotes, ',' and '=' would start a
# second value, a comment or a key, so a word holding one is refused, never cut short
_BARE_WORD = re.compile(r"[^\s#\"',=]+")
_KEY_PART = re.compile(r"[A-Za-z0-9_-]+")  # a TOML bare key


def parse_value(text: str, item: str | None = None) -> Any:
    """One override value: exactly one TOML value (a number, true/false, a quoted string, a
    [list], an {inline = table}), or a bare word such as ``krum`` or ``cuda:1`` taken as a
    string. Anything more (a newline, a comment, a second value) is a ConfigError naming the
    override ``item`` (default: the text), so nothing after the value is silently dropped."""
    where = f"--set {item if item is not None else text!r}"
    if "\n" in text or "\r" in text:
        raise ConfigError(f"{where}: the value runs over several lines; give one value")
    try:
        value = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        if _BARE_WORD.fullmatch(text):
            return text
        raise ConfigError(
            f"{where}: {text!r} is not one value (a number, true/false, a [list], an "
            '{inline = table}, or a string: a bare word, or quoted as key="a b")'
        ) from None
    try:  # a comment swallows the closing bracket: "v = [3 # x]" is not TOML, "v = [3]" is
        tomllib.loads(f"v = [{text}]")
    except tomllib.TOMLDecodeError:
        raise ConfigError(
            f"{where}: text after the value (a comment?); give exactly one value (a string "
            'that holds "#" is quoted: key="a#b")'
        ) from None
    if isinstance(value["v"], datetime.date | datetime.time):  # datetime is a date too
        return text  # no setting is a date: 2024-05-01 is a name
    key = (item or "").split("=", 1)[0].strip()
    if key.rsplit(".", 1)[-1] == "name" and text.strip() in ("inf", "nan"):
        return text.strip()  # a name is a string: attack.name=inf is the Inf attack
    return value["v"]


Override = str | tuple[str, Any]  # "section.key=value" text, or (dotted key, parsed value)


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[Override]) -> dict[str, Any]:
    """Apply overrides to a raw config dict and return the new dict (``raw`` is unchanged).

    An override is ``"section.key=value"`` text (one value, see :func:`parse_value`) or a
    ``(dotted key, value)`` pair of an already parsed value (a sweep entry's ``set`` table).
    A table value merges into the table it names: ``clients={n = 3}`` sets ``clients.n`` and
    keeps the section's other settings, as ``clients.n=3`` does.
    """
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        parts, value, where = _split_override(item)
        node = out
        for i, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is not a section")
        last = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(last), dict):
            _merge_into(node[last], value)
        else:
            node[last] = copy.deepcopy(value)
    from diversefl.config_diff import drop_switched_defaults  # config.toml's written defaults

    return drop_switched_defaults(raw, out)


def _split_override(item: Override) -> tuple[list[str], Any, str]:
    """(key parts, parsed value, how errors name the override) of one override."""
    if isinstance(item, tuple):
        key, value = item
        where = f"set {key!r}"
    else:
        key, sep, text = item.partition("=")
        where = f"--set {item!r}"
        if not sep:
            raise ConfigError(f"{where}: expected section.key=value")
        value = parse_value(text.strip(), item)
    parts = [p.strip() for p in str(key).split(".")]
    if not all(_KEY_PART.fullmatch(p) for p in parts):
        raise ConfigError(
            f"{where}: {str(key).strip()!r} is not a key (section.key: letters, digits, '_' "
            "and '-', parts joined by '.')"
        )
    return parts, value, where


def _merge_into(table: dict[str, Any], update: Mapping[str, Any]) -> None:
    """Set ``update``'s keys in ``table``, merging nested tables the same way."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(table.get(key), dict):
            _merge_into(table[key], value)
        else:
            table[key] = copy.deepcopy(value)


def load_config(
    path: str | Path | None = None, overrides: Sequence[Override] | None = None
) -> Config:
    """Read a TOML file (or start from defaults), apply overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"{p} is a directory, not a TOML config file")
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{p}: not valid TOML: {err}") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{p}: not UTF-8 text, as TOML must be ({err.reason})") from None
    # A sweep file's base config can be run on its own; the grid is `diversefl sweep`'s.
    raw.pop("sweep", None)
    return make_config(apply_overrides(raw, overrides or []))


def to_toml_dict(cfg: Config, *, defaults: bool = True) -> dict[str, Any]:
    """The fully resolved config as a TOML-serialisable dict (what config.toml holds): every
    setting, the aggregator's and the attack's own ones at their defaults included, so one
    config has one form however it was written. ``defaults=False`` keeps only the rule's and
    the attack's settings that were given (the base that overrides such as
    ``aggregator.name=median`` apply to, so another rule does not inherit this one's)."""
    raw = _drop_none(cfg.model_dump(mode="json"))
    if defaults:
        from diversefl.attacks import REGISTRY as ATTACKS
        from diversefl.methods import METHODS

        raw["aggregator"] = _with_defaults(raw["aggregator"], METHODS[cfg.aggregator.name])
        raw["attack"] = _with_defaults(raw["attack"], ATTACKS[cfg.attack.name])
    else:  # a searched rule that is the run's own aggregator is the default, not a given
        # setting: an override naming another aggregator moves it along
        from diversefl.aggregators.pipeline_name import pipeline_name
        from diversefl.attacks import REGISTRY as ATTACKS

        own = pipeline_name(cfg.aggregator.name, cfg.aggregator.pre)
        if getattr(ATTACKS.get(cfg.attack.name), "searches_rule", False):
            if raw["attack"].get("rule") == own:
                del raw["attack"]["rule"]
    return raw


def _with_defaults(section: dict[str, Any], method: Any) -> dict[str, Any]:
    """``section`` with every setting of the dataclass ``method``, those it leaves out at their
    defaults, in the method's field order after the section's own keys (None: left out)."""
    import dataclasses

    from pydantic_core import to_jsonable_python

    settings = [f for f in dataclasses.fields(method) if f.init]
    out = {k: v for k, v in section.items() if k not in {f.name for f in settings}}
    for f in settings:
        if f.name in section:
            out[f.name] = section[f.name]
        elif f.default is not dataclasses.MISSING:
            out[f.name] = to_jsonable_python(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = to_jsonable_python(f.default_factory())
    return _drop_none(out)


def _drop_none(obj: Any) -> Any:
    """TOML has no null: unset optional settings are left out (they load back as None)."""
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    return obj
