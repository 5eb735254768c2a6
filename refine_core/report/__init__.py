"""The run report: `build_report(run_dir)` writes OUT/report/report.md and a self-contained
report.html (figures embedded), from whatever stages of the run exist."""
from __future__ import annotations

from refine_core.report.render import build_report

__all__ = ["build_report"]
