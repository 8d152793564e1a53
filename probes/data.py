"""The bundled prompt sets (``bundled:math``, ``bundled:other``, ``bundled:non``, ``bundled:general-mix``).

30 prompts per domain, labelled with the paper's three groups: ``math``, ``other`` (other
reasoning: science, logic, coding, planning) and ``non`` (non-reasoning). Declared as entry points
of the group ``driftkit.data`` (see :mod:`driftkit.registry.data`), so the core finds them by name.
"""

from __future__ import annotations

from pathlib import Path

from driftkit.registry.data import DataSet

_DIR = Path(__file__).parent / "prompts"

MATH = DataSet("prompts", (_DIR / "math.jsonl",), "30 math prompts")
OTHER = DataSet("prompts", (_DIR / "other.jsonl",), "30 other-reasoning prompts (science, logic, coding, planning)")
NON = DataSet("prompts", (_DIR / "non.jsonl",), "30 non-reasoning prompts")
GENERAL_MIX = DataSet("prompts", MATH.files + OTHER.files + NON.files, "the three domain sets together (90 prompts)")
