"""The data pipeline: documents -> tokenized, packed, cached shards -> an exact, resumable mixture.

`prepare` (Ray Data for the distributed part) writes shards and a manifest per source under
`data.cacheUri/<content hash>/`; `BlendedSampler` maps global sample indices to (source, row);
`RankLoader` serves one rank's micro-batches with background prefetch.
"""

from .documents import DataError
from .feed import DataFeed
from .loader import MicroBatch, RankLoader, build_sampler, holdout_batches
from .manifest import Manifest
from .prepare import PreparedSource, PrepareReport, data_accounting, prepare
from .sampler import BlendedSampler, SamplerStateMismatch, SourceInfo

__all__ = [
    "BlendedSampler",
    "DataError",
    "DataFeed",
    "Manifest",
    "MicroBatch",
    "PrepareReport",
    "PreparedSource",
    "RankLoader",
    "SamplerStateMismatch",
    "SourceInfo",
    "build_sampler",
    "data_accounting",
    "holdout_batches",
    "prepare",
]
