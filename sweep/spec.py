"""The sweep spec: a YAML file (or a shipped preset) validated with pydantic, expanded into a plan of trials.

``model.family`` (default ``resnet``) picks the model family (:mod:`models.family`), whose spec class holds
the keys that family owns; a key another family owns is refused saying so, an unknown family naming the
known ones. Any of the family's axis keys given as a list of more than one value is a grid axis
(:meth:`SweepSpec.axes`): the family's knob (``model.C``, ``model.K``) always first, then the family's other
axes in its order (ResNet: ``protocol``, ``budget``, ``lr``, ``batch_size``, ``eval_every``,
``data.label_noise``). A grid list must be non-empty and its values
distinct (``model.C: [4, 4]`` would make two trials with one identity); numbers must be finite.

``name`` must match ``^[A-Za-z0-9][A-Za-z0-9._-]*$`` and have at most 100 characters: letters, digits,
``.``, ``_`` and ``-``, starting with a letter or digit. It becomes part of the sweep id, which goes into
MLflow filter strings (a quote would end the string) and Ray Tune folder paths (a slash would nest them).

Errors are :class:`SpecError`, one line each, naming the key or value and what is allowed; nothing here
touches Ray or MLflow.
"""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from models.family import Family, family_names, get_family
from sweep.spec_base import NAME_MAX_LENGTH, NAME_PATTERN, CommonSpec, SpecError


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading numbers in scientific notation without a dot (``1e-3``) as floats.

    PyYAML implements YAML 1.1, whose float pattern needs a dot (``1.0e-3``), so ``1e-3`` would be the string
    "1e-3"; YAML 1.2 (and a user) reads it as a number. The resolver below is YAML 1.2's float pattern; a second
    YAML library (ruamel.yaml) would bring that, at the price of two parsers for one regex.
    """


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                 |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                 |\.[0-9_]+(?:[eE][-+][0-9]+)?
                 |[-+]?\.(?:inf|Inf|INF)
                 |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(text: str) -> Any:
    """``text`` parsed with :class:`SpecLoader` (safe, scientific notation read as numbers)."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader


#: The base class of every family's spec (annotations: a validated spec of any family).
SweepSpec = CommonSpec
DEFAULT_FAMILY = "resnet"  # a spec without model.family


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
        raw = load_yaml(text)
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
            value = load_yaml(text)
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


def spec_family(raw: dict[str, Any]) -> Family:
    """The family a raw spec names with ``model.family`` (``resnet`` when absent); SpecError naming the known
    families otherwise."""
    model = raw.get("model")
    name = model.get("family", DEFAULT_FAMILY) if isinstance(model, dict) else DEFAULT_FAMILY
    if name is None:
        name = DEFAULT_FAMILY
    if not isinstance(name, str) or name not in family_names():
        raise SpecError(f"unknown model.family {name!r}{_did_you_mean(str(name), family_names())}; "
                        f"known families: {', '.join(family_names())}")
    return get_family(name)


def _foreign_key(raw: dict[str, Any], family: Family) -> str | None:
    """A one-line error for a key ``family`` lacks but another registered family owns, else None."""
    mine = family.spec_class
    for section in (None, "model", "data"):
        node = raw if section is None else raw.get(section)
        if not isinstance(node, dict):
            continue
        for key in node:
            allowed = _section_keys(mine, section)
            if allowed is None or key in allowed:
                continue
            owners = [f for f in family_names() if f != family.name
                      and key in (_section_keys(get_family(f).spec_class, section) or ())]
            if owners:
                dotted = key if section is None else f"{section}.{key}"
                return (f"key {dotted!r} belongs to family {' and '.join(owners)}, not {family.name}; "
                        f"{family.name}'s keys{'' if section is None else ' under ' + section}: {', '.join(allowed)}")
    return None


def _section_keys(spec_class: type[BaseModel], section: str | None) -> list[str] | None:
    if section is None:
        return list(spec_class.model_fields)
    field = spec_class.model_fields.get(section)
    sub = field.annotation if field else None
    return list(sub.model_fields) if isinstance(sub, type) and issubclass(sub, BaseModel) else None


def validate(raw: dict[str, Any]) -> CommonSpec:
    """A raw spec dict -> the validated spec of the family it names (``model.family``, default resnet)."""
    family = spec_family(raw)
    foreign = _foreign_key(raw, family)
    if foreign:
        raise SpecError(foreign)
    try:
        spec = family.spec_class.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(_one_line(exc, family)) from None
    from sweep import search  # the search block against the family: distributions, keys, metric

    search.check(spec)
    _check_drawable(spec)
    return spec


def _check_drawable(spec: CommonSpec) -> None:
    """Every value a searcher can draw passes the same validation as a value written in the spec: each one
    (:func:`sweep.search.drawable_values`: the choices, an interval's ends) is put in the spec in place of
    the key's value and the spec validated again; the first one refused is one line naming the draw."""
    from sweep import search

    family = spec.family
    resolved = spec.model_dump(mode="json")
    for key, value, drawn in search.drawable_values(spec):
        raw = apply_overrides(resolved, [])
        node = raw
        *parents, leaf = family.axis_keys[key].split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
        try:
            family.spec_class.model_validate(raw)
        except ValidationError as exc:
            raise SpecError(f"{drawn}: {_one_line(exc, family)}") from None


def load_spec(source: str, overrides: list[str] | None = None) -> tuple[SweepSpec, dict[str, Any]]:
    """Preset name or YAML path plus overrides -> (validated spec, resolved raw dict)."""
    raw = load_raw(source)
    raw = apply_overrides(raw, overrides or [])
    spec = validate(raw)
    return spec, spec.model_dump(mode="json")


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: "allowed" texts of the keys every family has; a family adds its own (:attr:`Family.allowed`).
ALLOWED = {
    "name": f"letters, digits, '.', '_' and '-', starting with a letter or digit, at most {NAME_MAX_LENGTH} "
            "characters (it goes into MLflow filter strings and folder paths)",
    "seeds": "a count n > 0 (seeds 0..n-1) or a non-empty list of distinct integers >= 0",
    "split_seed": "an integer >= 0",
    "resources.cpu": "a finite number > 0",
    "resources.gpu": "a finite number >= 0 (fractions share a GPU)",
}


def _field_path(loc: tuple[Any, ...], root: type[BaseModel]) -> tuple[list[str], type[BaseModel] | None]:
    """Keep the parts of a pydantic error location that are spec keys (drop union-branch labels)."""
    model: type[BaseModel] | None = root
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


def _one_line(exc: ValidationError, family: Family) -> str:
    root = family.spec_class
    err = _pick(exc.errors())
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        parents, model = _field_path(err["loc"][:-1], root)
        name = str(err["loc"][-1])
        allowed = list((model or root).model_fields)
        key = ".".join([*parents, name])
        under = f" under {'.'.join(parents)}" if parents else ""
        return f"unknown key {key!r}{_did_you_mean(name, allowed)}; allowed keys{under}: {', '.join(allowed)}"
    path, _ = _field_path(err["loc"], root)
    key = ".".join(path)
    if err["type"] == "missing":
        return f"missing key {key!r}"
    if not key:
        return f"bad spec: {msg}"
    allowed = {**ALLOWED, **family.allowed}.get(key.split("[")[0])
    return f"bad value for {key!r}: {err.get('input')!r} ({msg})" + (f"; allowed: {allowed}" if allowed else "")


__all__ = ["ALLOWED", "DEFAULT_FAMILY", "NAME_MAX_LENGTH", "NAME_PATTERN", "SpecError", "SpecLoader", "SweepSpec",
           "apply_overrides", "load_raw", "load_spec", "load_yaml", "preset_names", "preset_summaries", "spec_family",
           "validate"]
