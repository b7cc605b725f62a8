"""The operator's `cpt` commands: operator, render, status, logs, suspend, resume.

Composed lazily by `cpt_core.cli`: `operator` (run the control
plane, `cpt render`) and `jobs` (`cpt status|logs|suspend|resume` and the `kubectl cpt` plugin).
"""
