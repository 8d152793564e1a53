"""Bundled benchmark plugins, their fixtures, their suites (``suites.toml``) and the lm-eval import."""

from pathlib import Path

#: the bundled suites, declared as entry point ``driftkit.suites: bundled`` (see driftkit.registry.suites)
SUITES_FILE = Path(__file__).with_name("suites.toml")
