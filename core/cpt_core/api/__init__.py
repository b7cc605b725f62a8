"""The CPTJob API: typed models (the source of truth), the generated CRD, validation."""

from .v1alpha1 import API_VERSION, KIND, CPTJob, CPTJobSpec, CPTJobStatus

__all__ = ["API_VERSION", "KIND", "CPTJob", "CPTJobSpec", "CPTJobStatus"]
