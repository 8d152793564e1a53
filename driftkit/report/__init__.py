"""Comparison reports: JSON (``driftkit.report/1``), pandas, rich terminal and self-contained HTML."""

from driftkit.report.report import Report

__all__ = ["Report"]
