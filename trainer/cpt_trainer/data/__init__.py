"""The data pipeline: documents -> tokenized, packed, cached shards -> an exact, resumable mixture.

`prepare` (Ray Data for the distributed part) writes shards and a manifest per source under
`data.cacheUri/<content hash>/`; `BlendedSampler` maps global sample indices to (source, row);
`RankLoader` serves one rank's micro-batches with background prefetch.
"""

from cpt_trainer.data.documents import DataError
from cpt_trainer.data.feed import DataFeed
from cpt_trainer.data.loader import MicroBatch, RankLoader, build_sampler, holdout_batches
from cpt_trainer.data.manifest import Manifest
from cpt_trainer.data.prepare import PreparedSource, PrepareReport, data_accounting, prepare
from cpt_trainer.data.sampler import BlendedSampler, SamplerStateMismatch, SourceInfo

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
