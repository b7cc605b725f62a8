"""The CPTJob API: typed models (`v1alpha1`, the source of truth) and the progress file's schema (`progress`).

The CRD and the references are generated from them (`cpt_core.schema`); documents are checked against
them (`cpt_core.validation`); reading and writing the progress file is `cpt_core.storage.progress`.
"""

from cpt_core.api.v1alpha1 import CPTJob, CPTJobSpec, CPTJobStatus

__all__ = ["CPTJob", "CPTJobSpec", "CPTJobStatus"]
