"""Synthesis as the first step of a run (`cpt run`, the operator's `cpt train`): on the connected Ray,
before `prepare`, with the run's progress file saying what happens, and the gates and samples of each
synthesis copied into the run's report."""

from __future__ import annotations

from typing import Any

from cpt_core.api.v1alpha1 import CPTJobSpec
from cpt_core.storage import Storage, parse_uri

from .pipeline import synthesize


def synthesize_sources(spec: CPTJobSpec, storage: Storage, reporter: Any, workers: int) -> CPTJobSpec:
    """`spec` with its synthesised sources generated (or found done) and pointing at their files."""
    if not any(source.synthesize is not None for source in spec.data.sources):
        return spec

    def progress(message: str) -> None:
        reporter.report("preparing", message=message)

    spec, results = synthesize(spec, storage, use_ray=True, workers=workers, progress=progress)
    report = parse_uri(spec.checkpoint.uri).as_prefix().join("report/")
    for result in results:
        storage.write_text(report.join(f"synthesis-{result.source}.json"), result.manifest.to_json())
    return spec
