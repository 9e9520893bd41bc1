"""The sweep spec: a YAML file (or a shipped preset) validated with pydantic, expanded into a plan of trials.

``model.family`` (default ``resnet``) picks the model family (:mod:`models.family`), whose spec class holds
the keys that family owns; a key another family owns is refused saying so, an unknown family naming the
known ones. Any of the family's axis keys given as a list of more than one value is a grid axis
(:meth:`models.spec.CommonSpec.axes`): the family's knob (``model.C``, ``model.K``) always first, then the
family's other axes in its order (ResNet: ``protocol``, ``budget``, ``lr``, ``batch_size``, ``eval_every``,
``data.label_noise``). A grid list must be non-empty and its values
distinct (``model.C: [4, 4]`` would make two trials with one identity); numbers must be finite.

``name`` must match ``^[A-Za-z0-9][A-Za-z0-9._-]*$`` and have at most 100 characters: letters, digits,
``.``, ``_`` and ``-``, starting with a letter or digit. It becomes part of the sweep id, which goes into
MLflow filter strings (a quote would end the string) and Ray Tune folder paths (a slash would nest them).

Errors are :class:`SpecError`, one line each, naming the key or value and what is allowed; nothing here
touches Ray or MLflow.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from models.family import Family, family_names, get_family
from models.spec import CommonSpec, SpecError, load_yaml
from sweep.spec_check import check_drawable, check_search, did_you_mean, foreign_key, one_line

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
            f"unknown preset {source!r}{did_you_mean(source, preset_names())}; "
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
        raise SpecError(f"unknown model.family {name!r}{did_you_mean(str(name), family_names())}; "
                        f"known families: {', '.join(family_names())}")
    return get_family(name)


def validate(raw: dict[str, Any]) -> CommonSpec:
    """A raw spec dict -> the validated spec of the family it names (``model.family``, default resnet)."""
    family = spec_family(raw)
    foreign = foreign_key(raw, family)
    if foreign:
        raise SpecError(foreign)
    try:
        spec = family.spec_class.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(one_line(exc, family)) from None
    check_search(spec)
    check_drawable(spec)
    return spec


def load_spec(source: str, overrides: list[str] | None = None) -> tuple[CommonSpec, dict[str, Any]]:
    """Preset name or YAML path plus overrides -> (validated spec, resolved raw dict)."""
    raw = load_raw(source)
    raw = apply_overrides(raw, overrides or [])
    spec = validate(raw)
    return spec, spec.model_dump(mode="json")


__all__ = ["DEFAULT_FAMILY", "SpecError", "apply_overrides", "load_raw", "load_spec", "preset_names",
           "preset_summaries", "spec_family", "validate"]
