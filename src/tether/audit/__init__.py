"""`tether audit`: models and endpoints side by side on XSTest, sycophancy probes and your own workload.

config.py holds the settings, suites.py the prompts (XSTest, fact questions, the workload), scoring.py the pure
rates, stage.py the run, html.py the report. Data shipped in data/ (XSTest under CC-BY-4.0; see data/README.md).
"""
from tether.audit.config import AuditConfig, Target
from tether.audit.stage import run

__all__ = ["AuditConfig", "Target", "run"]
