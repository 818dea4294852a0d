"""Workflows: declarative chains of tasks run as one parent MLflow run, with a resume cache and a report.

- :mod:`.spec`: the TOML file format (:func:`load_workflow`, :func:`apply_overrides`);
- :mod:`.refs`: ``${vars.X}`` / ``${steps.S.run_id}`` / ``${steps.S.outputs.K}`` references;
- :mod:`.validate`: every step checked before the first one starts;
- :mod:`.cache`: the resume cache key;
- :mod:`.runner`: :func:`run_workflow`;
- :mod:`.report`: the results table and the self-contained HTML report.

Nothing here imports MLflow, TensorFlow or matplotlib at import time.
"""

from __future__ import annotations

from .discovery import find_workflow, registered_workflows
from .runner import StepOutcome, WorkflowResult, WorkflowStepError, run_workflow
from .spec import Step, Workflow, WorkflowFileError, apply_overrides, load_workflow, parse_workflow
from .validate import WorkflowValidationError, validate_workflow

__all__ = [
    "Step", "Workflow", "WorkflowFileError", "WorkflowValidationError", "WorkflowStepError", "StepOutcome",
    "WorkflowResult", "apply_overrides", "find_workflow", "load_workflow", "parse_workflow",
    "registered_workflows", "run_workflow", "validate_workflow",
]
