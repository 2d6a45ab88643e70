"""Coded concepts for the label names a model folder gives (a bundle's ``channel_def``, nnU-Net's
``dataset.json``): SNOMED CT by name from pydicom's ``codes.SCT``, then an optional ``labels.toml`` that
adds or overrides codes, colours and clean-up.

A name resolves when, with its laterality word taken out as a modifier (Left / Right), its words in
CamelCase are a keyword of ``codes.SCT``: ``kidney_right`` → Kidney + Right, ``Gallbladder`` →
Gallbladder. Anything else (``vertebrae_L5``, a typo such as ``Left Kideny``) needs ``labels.toml``; a
label with no code stops start-up naming every such label, since a SEG with a made-up code is worse than
none. A name that resolves is not always the intended concept (TotalSegmentator's ``hip`` is the hip
bone, SCT "Hip" the region): ``labels.toml`` overrides it.

``labels.toml``::

    [labels.hip_left]                       # the name as the model folder spells it
    type = "BoneStructureOfIlium"           # a codes.SCT keyword ...
    modifier = "Left"
    color = [230, 200, 150]

    [labels.vertebrae_L5]
    type = { scheme = "SCT", value = "49668003", meaning = "Fifth lumbar vertebra" }  # ... or a code
    category = "AnatomicalStructure"        # the default; e.g. "MorphologicallyAbnormalStructure"
    keep_largest = 1                        # clean-up, as in model.toml (default: none)

    [labels."Whole tumor"]                  # a segment made of several label-map values: BraTS's
    values = [1, 2, 4]                      # nested regions, or a sigmoid bundle's merged channels

``values`` (default: the label's own value) lets segments overlap: a voxel of value 4 is in every
segment listing 4. Clean-up options need a label of one value (they would change the other segments).
"""

from __future__ import annotations

import colorsys
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydicom.sr.codedict import codes

from db.errors import ConfigurationError
from worker.models.spec import Code, LabelSpec

LATERALITY = {"left": "Left", "right": "Right"}
DEFAULT_CATEGORY = "AnatomicalStructure"
ENTRY_KEYS = {"type", "modifier", "category", "anatomic_region", "color", "keep_largest", "fill_holes",
              "min_volume_ml", "values"}


def sct(keyword: str) -> Code:
    """A ``codes.SCT`` keyword as a ``Code``; ``KeyError`` naming it when pydicom has no such keyword."""
    try:
        found = getattr(codes.SCT, keyword)
    except AttributeError:
        raise KeyError(f"{keyword!r} is not a keyword of pydicom's codes.SCT") from None
    return Code(scheme=found.scheme_designator, value=found.value, meaning=found.meaning[:64])


def by_name(name: str) -> tuple[Code, Code | None] | None:
    """(type, laterality modifier) for a label name, or None when it does not resolve."""
    words = [w for w in re.split(r"[\s_\-]+", name.strip()) if w]
    sides = [LATERALITY[w.lower()] for w in words if w.lower() in LATERALITY]
    rest = [w for w in words if w.lower() not in LATERALITY]
    if len(sides) > 1 or not rest:
        return None
    keyword = "".join(w[:1].upper() + w[1:].lower() for w in rest)
    try:
        return sct(keyword), sct(sides[0]) if sides else None
    except KeyError:
        return None


def _code(value: Any, where: str) -> Code:
    if isinstance(value, str):
        try:
            return sct(value)
        except KeyError as exc:
            raise ConfigurationError(f"{where}: {exc.args[0]}") from None
    if isinstance(value, dict) and {"value", "meaning"} <= value.keys():
        return Code(scheme=str(value.get("scheme", "SCT")), value=str(value["value"]), meaning=str(value["meaning"]))
    raise ConfigurationError(f"{where}: {value!r} is neither a codes.SCT keyword nor {{scheme, value, meaning}}")


def read_labels_toml(path: Path) -> dict[str, dict[str, Any]]:
    """The ``[labels.NAME]`` tables of ``path``; none when the file does not exist."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{str(path)!r} is not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - {"labels"})
    if unknown:
        raise ConfigurationError(f"{str(path)!r}: unknown table(s) {unknown}; expected [labels.NAME]")
    entries = dict(raw.get("labels", {}))
    for name, entry in entries.items():
        extra = sorted(set(entry) - ENTRY_KEYS)
        if extra:
            raise ConfigurationError(f"{str(path)!r}: labels.{name}: unknown key(s) {extra} "
                                     f"(known: {', '.join(sorted(ENTRY_KEYS))})")
    return entries


def palette(value: int) -> tuple[int, int, int]:
    """A distinct, stable colour for a label without one (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((value * 0.618033988749895) % 1.0, 0.65, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def coded_labels(names: Mapping[int, str], toml: Path, model: str) -> tuple[LabelSpec, ...]:
    """A ``LabelSpec`` for every label, or ``ConfigurationError`` naming each label that has no code."""
    entries = read_labels_toml(toml)
    stray = sorted(k for k in entries if k not in set(names.values()))
    if stray:
        raise ConfigurationError(f"{str(toml)!r}: labels {stray} are not labels of {model} "
                                 f"({', '.join(names.values())})")
    out, missing = [], []
    for value, name in sorted(names.items()):
        entry = entries.get(name, {})
        where = f"{str(toml)!r}: labels.{name}"
        found = by_name(name)
        if "type" in entry:
            type_code = _code(entry["type"], f"{where}.type")
            modifier = _code(entry["modifier"], f"{where}.modifier") if "modifier" in entry else None
        elif found:
            type_code, modifier = found
            if "modifier" in entry:
                modifier = _code(entry["modifier"], f"{where}.modifier")
        else:
            missing.append(name)
            continue
        region = entry.get("anatomic_region")
        try:
            out.append(LabelSpec(
                value=value, name=name[:64],
                category=_code(entry.get("category", DEFAULT_CATEGORY), f"{where}.category"),
                type=type_code, modifier=modifier, color=tuple(entry.get("color", palette(value))),
                anatomic_region=_code(region, f"{where}.anatomic_region") if region is not None else None,
                **{k: entry[k] for k in ("keep_largest", "fill_holes", "min_volume_ml", "values") if k in entry}))
        except ValidationError as exc:
            first = exc.errors()[0]
            key = "".join(f".{p}" for p in first["loc"])
            raise ConfigurationError(f"{where}{key}: {first['msg']}") from exc
    if missing:
        raise ConfigurationError(f"{len(missing)} label(s) of {model} have no SNOMED CT code by name and none in "
                                 f"{str(toml)!r}: {', '.join(missing)}")
    for label in out:
        shared = [other.name for other in out if other is not label and set(other.mask_values) & set(label.mask_values)]
        if shared and (label.keep_largest or label.fill_holes or label.min_volume_ml):
            raise ConfigurationError(f"{str(toml)!r}: labels.{label.name}: keep_largest, fill_holes and "
                                     f"min_volume_ml clean a label whose values no other label shares "
                                     f"({', '.join(shared)} share them)")
    return tuple(out)
