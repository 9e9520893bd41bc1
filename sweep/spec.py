"""The sweep spec: a YAML file (or a shipped preset) validated with pydantic, expanded into a plan of trials.

Any hyperparameter given as a list of more than one value is a grid axis (:meth:`SweepSpec.axes`): the
model's knob ``model.C`` (always the first axis), then ``protocol``, ``budget``, ``lr``, ``batch_size``,
``eval_every`` and ``data.label_noise``, in that order. A grid list must be non-empty and its values
distinct (``model.C: [4, 4]`` would make two trials with one identity); numbers must be finite.

``name`` must match ``^[A-Za-z0-9][A-Za-z0-9._-]*$`` and have at most 100 characters: letters, digits,
``.``, ``_`` and ``-``, starting with a letter or digit. It becomes part of the sweep id, which goes into
MLflow filter strings (a quote would end the string) and Ray Tune folder paths (a slash would nest them).

Errors are :class:`SpecError`, one line each, naming the key or value and what is allowed; nothing here
touches Ray or MLflow.
"""

from __future__ import annotations

import difflib
import itertools
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sweep.config import DEFAULT_EVAL_EVERY, N_TRAIN, TrainConfig
from sweep.names import AXES, KNOB

PositiveInt = Annotated[int, Field(gt=0, strict=True)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NoiseFraction = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
ProtocolName = Literal["handout", "epochs"]
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
NAME_MAX_LENGTH = 100


class SpecError(ValueError):
    """A sweep spec, preset, override or file that cannot be used; its message is one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _grid_list(v: Any) -> Any:
    """A grid list must name at least one value and no value twice (each value is one trial identity)."""
    if isinstance(v, list):
        if not v:
            raise ValueError("an empty list is no grid: give at least one value")
        seen: list[Any] = []
        for item in v:
            if item in seen:
                raise ValueError(f"the value {item!r} is repeated: grid values must be distinct")
            seen.append(item)
    return v


class ModelSpec(_Strict):
    family: Literal["resnet"] = "resnet"
    C: PositiveInt | list[PositiveInt] = Field(description="ResNet width(s); the complexity knob")

    _C_grid = field_validator("C")(_grid_list)


class DataSpec(_Strict):
    label_noise: NoiseFraction | list[NoiseFraction] = Field(
        0.0, description="fraction of training labels replaced by a different class, in [0, 1); a list = an axis"
    )

    _noise_grid = field_validator("label_noise")(_grid_list)


class ResourcesSpec(_Strict):
    cpu: float = Field(1.0, gt=0, allow_inf_nan=False, description="CPUs per trial; torch uses this many threads")
    gpu: float = Field(0.0, ge=0, allow_inf_nan=False, description="GPUs per trial; 0.25 puts four trials on one GPU")


class TrackingSpec(_Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default sqlite:///mlflow.db here")
    experiment: str | None = Field(None, description="MLflow experiment; default: the sweep's name")


class SweepSpec(_Strict):
    name: str = Field(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)
    model: ModelSpec
    data: DataSpec = DataSpec()
    seeds: PositiveInt | list[Annotated[int, Field(ge=0, strict=True)]] = Field(
        description="a count n meaning seeds 0..n-1, or an explicit list"
    )
    protocol: ProtocolName | list[ProtocolName] = "handout"
    budget: PositiveInt | list[PositiveInt] = 4000
    lr: PositiveFloat | list[PositiveFloat] = 0.1
    batch_size: PositiveInt | list[PositiveInt] = 128
    eval_every: PositiveInt | list[PositiveInt] | None = None
    split_seed: Annotated[int, Field(ge=0, strict=True)] = 0
    dtype: Literal["float32", "float64"] = "float32"
    pack: Literal["auto", "off"] = "auto"
    pack_size: PositiveInt | None = Field(None, description="most seeds packed into one Ray trial")
    resources: ResourcesSpec = ResourcesSpec()
    max_concurrent_trials: PositiveInt | None = None
    max_failures: Annotated[int, Field(ge=0, strict=True)] = 3
    checkpoint_every: PositiveInt | None = Field(None, description="evaluations between checkpoints")
    tracking: TrackingSpec = TrackingSpec()

    @field_validator("pack", mode="before")
    @classmethod
    def _yaml_off_is_false(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false and `on` as true.
        return {False: "off", True: "auto"}.get(v, v) if isinstance(v, bool) else v

    _grids = field_validator("seeds", "protocol", "budget", "lr", "batch_size", "eval_every")(_grid_list)

    @field_validator("batch_size")
    @classmethod
    def _batch_fits(cls, v: int | list[int]) -> int | list[int]:
        for b in _as_list(v):
            if b > N_TRAIN:
                raise ValueError(f"batch_size {b} is larger than the training half ({N_TRAIN} images)")
        return v

    @model_validator(mode="after")
    def _eval_fits_budget(self) -> SweepSpec:
        for protocol, budget, every in itertools.product(
            _as_list(self.protocol), _as_list(self.budget), _as_list(self.eval_every)
        ):
            every = every or DEFAULT_EVAL_EVERY[protocol]
            if every > budget:
                raise ValueError(f"eval_every {every} is larger than the budget {budget} ({protocol} protocol)")
        return self

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)

    def values(self, axis: str) -> list[Any]:
        """The values the spec gives hyperparameter ``axis`` (``C`` or a :data:`sweep.names.AXES` name)."""
        if axis == KNOB:
            return _as_list(self.model.C)
        if axis == "label_noise":
            return _as_list(self.data.label_noise)
        if axis not in AXES:
            raise KeyError(f"{axis!r} is not a grid axis; axes are {KNOB}, {', '.join(AXES)}")
        return _as_list(getattr(self, axis))

    @property
    def axes(self) -> tuple[str, ...]:
        """The grid's axes in spec order: the knob ``C`` always, then every hyperparameter of
        :data:`sweep.names.AXES` that has more than one value. A trial is identified by its value on each."""
        return (KNOB, *(axis for axis in AXES if len(self.values(axis)) > 1))

    def configs(self) -> list[TrainConfig]:
        """Every grid point except the seed, in a stable order: C varies slowest, then the other axes in
        :data:`sweep.names.AXES` order, each list in the order the spec gives it."""
        points = itertools.product(self.values(KNOB), *(self.values(axis) for axis in AXES))
        return [
            TrainConfig(C=C, **dict(zip(AXES, rest, strict=True)), split_seed=self.split_seed, dtype=self.dtype)
            for C, *rest in points
        ]


def _as_list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list) else [v]


# -- presets and files -------------------------------------------------------------------------------

def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("sweep.presets").iterdir()
                  if p.name.endswith(".yaml"))


def preset_summaries() -> dict[str, str]:
    """Preset name -> its one-line description (the YAML's ``# summary:`` line)."""
    out = {}
    for name in preset_names():
        text = resources.files("sweep.presets").joinpath(f"{name}.yaml").read_text()
        line = next((ln for ln in text.splitlines() if ln.startswith("# summary:")), "# summary: ")
        out[name] = line.removeprefix("# summary:").strip()
    return out


def load_raw(source: str) -> dict[str, Any]:
    """Read a preset name or a YAML path into a raw dict."""
    if source in preset_names():
        text = resources.files("sweep.presets").joinpath(f"{source}.yaml").read_text()
    elif source.endswith((".yaml", ".yml")) or "/" in source:
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"spec file {source!r} does not exist")
        text = path.read_text()
    else:
        raise SpecError(
            f"unknown preset {source!r}{_did_you_mean(source, preset_names())}; "
            f"presets are {', '.join(preset_names())}, or give a path to a .yaml file"
        )
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise SpecError(f"spec {source!r} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"spec {source!r} must be a YAML mapping of keys to values")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (``[1,2]`` is a list, ``10`` an int)."""
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy, plain types only
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise SpecError(f"malformed --set {item!r}: expected key=value, e.g. --set model.C=[1,2,4]")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise SpecError(f"malformed --set {item!r}: the value {text!r} is not valid YAML") from None
        node = raw
        *parents, leaf = key.strip().split(".")
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(f"malformed --set {item!r}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return raw


def validate(raw: dict[str, Any]) -> SweepSpec:
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_one_line(exc)) from None


def load_spec(source: str, overrides: list[str] | None = None) -> tuple[SweepSpec, dict[str, Any]]:
    """Preset name or YAML path plus overrides -> (validated spec, resolved raw dict)."""
    raw = load_raw(source)
    raw = apply_overrides(raw, overrides or [])
    spec = validate(raw)
    return spec, spec.model_dump(mode="json")


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


_LIST = "a non-empty list of distinct ones"
ALLOWED = {
    "name": f"letters, digits, '.', '_' and '-', starting with a letter or digit, at most {NAME_MAX_LENGTH} "
            "characters (it goes into MLflow filter strings and folder paths)",
    "model.C": f"a positive integer or {_LIST}",
    "data.label_noise": f"a fraction in [0, 1) or {_LIST}",
    "seeds": "a count n > 0 (seeds 0..n-1) or a non-empty list of distinct integers >= 0",
    "protocol": "'handout' or 'epochs', or a non-empty list of distinct ones",
    "budget": f"an integer > 0 or {_LIST}",
    "lr": f"a finite number > 0 or {_LIST}",
    "batch_size": f"an integer in 1..{N_TRAIN} or {_LIST}",
    "eval_every": f"an integer in 1..budget, {_LIST}, or null for the protocol's default",
    "split_seed": "an integer >= 0",
    "resources.cpu": "a finite number > 0",
    "resources.gpu": "a finite number >= 0 (fractions share a GPU)",
}


def _field_path(loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel] | None]:
    """Keep the parts of a pydantic error location that are spec keys (drop union-branch labels)."""
    model: type[BaseModel] | None = SweepSpec
    path: list[str] = []
    for part in loc:
        if isinstance(part, int):
            path[-1:] = [f"{path[-1]}[{part}]"] if path else []
            continue
        if model is not None and part in model.model_fields:
            path.append(part)
            sub = model.model_fields[part].annotation
            model = sub if isinstance(sub, type) and issubclass(sub, BaseModel) else None
    return path, model


def _pick(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """For a union (scalar | list) report the branch that matches what the user wrote."""
    first = errors[0]
    for err in errors:
        if isinstance(first.get("input"), list) and any(isinstance(p, int) for p in err["loc"]):
            return err
    return first


def _one_line(exc: ValidationError) -> str:
    err = _pick(exc.errors())
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        parents, model = _field_path(err["loc"][:-1])
        name = str(err["loc"][-1])
        allowed = list((model or SweepSpec).model_fields)
        key = ".".join([*parents, name])
        under = f" under {'.'.join(parents)}" if parents else ""
        return f"unknown key {key!r}{_did_you_mean(name, allowed)}; allowed keys{under}: {', '.join(allowed)}"
    path, _ = _field_path(err["loc"])
    key = ".".join(path)
    if err["type"] == "missing":
        return f"missing key {key!r}"
    if not key:
        return f"bad spec: {msg}"
    allowed = ALLOWED.get(key.split("[")[0])
    return f"bad value for {key!r}: {err.get('input')!r} ({msg})" + (f"; allowed: {allowed}" if allowed else "")
