"""The whole study as one cached, resumable pipeline (``driftkit run`` / ``driftkit demo``)."""

from driftkit.pipeline.experiment import Experiment, from_dict, load_experiment
from driftkit.pipeline.runner import RunResult, plan, run_experiment

__all__ = ["Experiment", "RunResult", "from_dict", "load_experiment", "plan", "run_experiment"]
