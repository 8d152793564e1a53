"""``python -m driftkit.cli`` runs the ``driftkit`` command; it is what ``torchrun -m driftkit.cli capture ...``
starts in every worker process (see docs/scale.md)."""

from driftkit.cli.main import main

main()
