"""The checks of a spec beyond its pydantic types, and every refusal as one line.

A key another family owns is named with its owner; the ``search:`` block is checked against the family
(distributions, searchable keys, the metric); every value a searcher can draw goes through the same rules as
a value written in the spec. Nothing here imports Ray, torch or MLflow: the CLI refuses bad input in well
under a second.
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Any

from pydantic import BaseModel, ValidationError

from models.family import Family, family_names, get_family
from models.spec import DISTRIBUTIONS, NAME_MAX_LENGTH, CommonSpec, SpecError, as_list


def foreign_key(raw: dict[str, Any], family: Family) -> str | None:
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


def distribution(spec: CommonSpec, key: str) -> tuple[str, list[Any]]:
    """(name, arguments) of searched key ``key``: ``("loguniform", [1e-3, 1])``."""
    ((name, args),) = spec.search.space[key].items()
    return name, list(args)


def check_search(spec: CommonSpec) -> None:
    """Refuse a search block the family cannot run, one line each (SpecError), before Ray starts."""
    search = spec.search
    family = spec.family
    if search.space and search.algorithm == "grid":  # with or without a scheduler: a grid samples nothing
        raise SpecError("search.space is given but search.algorithm is grid, which never samples it: use "
                        "algorithm random or optuna, or give the values as a grid list")
    if search.algorithm == "refine":
        check_refine(spec)
        return
    if not search.active:
        return
    if not family.validation_metrics:
        raise SpecError(f"family {family.name} logs no validation metric, so it cannot be searched or scheduled "
                        "(search.algorithm must be grid and search.scheduler fifo)")
    allowed_metrics = [m.name for m in family.validation_metrics]
    if search.metric not in allowed_metrics:
        raise SpecError(f"search.metric {search.metric!r} is not a validation metric of family {family.name}; "
                        f"allowed: {', '.join(allowed_metrics)} (selection never reads the test half)")
    if search.num_samples <= 0:
        raise SpecError(f"search.num_samples must be an integer > 0, got {search.num_samples}")
    if search.algorithm != "grid" and not search.space:
        raise SpecError(f"search.algorithm {search.algorithm} needs a search.space, e.g. "
                        "space: {lr: {loguniform: [0.001, 1]}}")
    if search.algorithm != "grid" and spec.pack == "off":
        raise SpecError(f"pack: off cannot go with search.algorithm {search.algorithm}: a sampled configuration "
                        "trains all its seeds in one trial, whose mean over seeds the searcher reads; use pack: auto")
    searchable = [a for a in family.axis_keys if a not in ("budget", "protocol", "eval_every")]
    for key, dist in search.space.items():
        if key not in searchable:
            raise SpecError(f"search.space key {key!r} is not a searchable key of family {family.name}; "
                            f"searchable: {', '.join(searchable)}")
        if len(as_list(spec.values(key))) > 1:
            raise SpecError(f"{key!r} is given both as a grid list and in search.space: give it in one place")
        if not isinstance(dist, dict) or len(dist) != 1:
            raise SpecError(f"search.space.{key} must name one distribution, e.g. {{loguniform: [0.001, 1]}}; "
                            f"distributions: {', '.join(DISTRIBUTIONS)}")
        ((name, args),) = dist.items()
        if name not in DISTRIBUTIONS:
            raise SpecError(f"unknown distribution {name!r} for search.space.{key}; "
                            f"distributions: {', '.join(DISTRIBUTIONS)}")
        if not isinstance(args, list) or not args:
            raise SpecError(f"search.space.{key}.{name} needs a list, e.g. [0.001, 1]")
        if name == "choice":
            if len(set(map(repr, args))) != len(args):
                raise SpecError(f"search.space.{key}.choice repeats a value: choices must be distinct")
            continue
        if len(args) != 2 or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args):
            raise SpecError(f"search.space.{key}.{name} needs [low, high] (two numbers), got {args!r}")
        low, high = args
        if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
            raise SpecError(f"search.space.{key}.{name}: low {low} must be below high {high}")
        if name == "loguniform" and low <= 0:
            raise SpecError(f"search.space.{key}.loguniform: low {low} must be > 0 (a log scale)")
        if name == "randint" and not all(isinstance(a, int) for a in args):
            raise SpecError(f"search.space.{key}.randint needs integer bounds, got {args!r}")
    if search.algorithm == "optuna":
        grid = [a for a in spec.axes if a not in search.space and len(spec.values(a)) > 1]
        if grid:
            raise SpecError(f"search.algorithm optuna cannot take grid lists ({', '.join(grid)}): give one value, "
                            "or search it in search.space, or use algorithm random (it multiplies grids)")


def check_refine(spec: CommonSpec) -> None:
    """A refine search chooses values of the knob alone, integers, starting from the grid's: at least two of
    them, no other grid axis or searched key, no scheduler, and ``num_samples`` (values in all) no fewer than
    the grid's."""
    search, family = spec.search, spec.family
    knob, key = family.knob, family.axis_keys[family.knob]
    start = spec.values(knob)
    if len(start) < 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in start):
        raise SpecError(f"search.algorithm refine needs {key} as a list of at least two integers to start from "
                        f"(it refines between them), got {start!r}")
    others = [a for a in spec.axes if a != knob]
    if search.space or others:
        raise SpecError(f"search.algorithm refine chooses {key} alone: give the other keys one value each "
                        f"(not {', '.join([*others, *search.space])})")
    if search.scheduler != "fifo":
        raise SpecError("search.algorithm refine trains every value it chooses to its budget: use scheduler fifo")
    if search.num_samples < len(start):
        raise SpecError(f"search.num_samples {search.num_samples} is below the {len(start)} values of {key} that "
                        f"refine starts from: it counts every value of {knob} trained, the grid's included")


def drawable_values(spec: CommonSpec) -> list[tuple[str, Any, str]]:
    """(key, value, how it is drawn) for the values of ``search.space`` that decide whether every draw is valid:
    each choice; the lowest and the highest value an interval can give. Tune's uniform and loguniform draw
    from [low, high) and randint from low..high - 1, so the highest draw is the float just below ``high``, or
    ``high - 1``. A key's rules are bounds (> 0, < 1, <= the images trained on) and a type, so checking these
    values checks every draw (:func:`sweep.spec.validate` runs them through the spec's own rules)."""
    out: list[tuple[str, Any, str]] = []
    for key in spec.search.space:
        name, args = distribution(spec, key)
        where = f"search.space.{key}.{name}"
        if name == "choice":
            out += [(key, v, f"{where} can draw {v!r}") for v in args]
        elif name == "randint":
            out += [(key, args[0], f"{where} can draw {args[0]!r}"),
                    (key, args[1] - 1, f"{where} can draw {args[1] - 1!r} (its high {args[1]} is exclusive)")]
        else:
            low = float(args[0])
            out += [(key, low, f"{where} can draw {low!r}"),
                    (key, math.nextafter(float(args[1]), -math.inf), f"{where} can draw values just below {args[1]!r}")]
    return out


def check_drawable(spec: CommonSpec) -> None:
    """Every value a searcher can draw passes the same validation as a value written in the spec: each one
    (:func:`drawable_values`: the choices, an interval's ends) is put in the spec in place of
    the key's value and the spec validated again; the first one refused is one line naming the draw."""
    family = spec.family
    resolved = spec.model_dump(mode="json")
    for key, value, drawn in drawable_values(spec):
        raw = copy.deepcopy(resolved)
        node = raw
        *parents, leaf = family.axis_keys[key].split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
        try:
            family.spec_class.model_validate(raw)
        except ValidationError as exc:
            raise SpecError(f"{drawn}: {one_line(exc, family)}") from None


def did_you_mean(word: str, options: list[str]) -> str:
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


def one_line(exc: ValidationError, family: Family) -> str:
    root = family.spec_class
    err = _pick(exc.errors())
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        parents, model = _field_path(err["loc"][:-1], root)
        name = str(err["loc"][-1])
        allowed = list((model or root).model_fields)
        key = ".".join([*parents, name])
        under = f" under {'.'.join(parents)}" if parents else ""
        return f"unknown key {key!r}{did_you_mean(name, allowed)}; allowed keys{under}: {', '.join(allowed)}"
    path, _ = _field_path(err["loc"], root)
    key = ".".join(path)
    if err["type"] == "missing":
        return f"missing key {key!r}"
    if not key:
        return f"bad spec: {msg}"
    allowed = {**ALLOWED, **family.allowed}.get(key.split("[")[0])
    return f"bad value for {key!r}: {err.get('input')!r} ({msg})" + (f"; allowed: {allowed}" if allowed else "")


