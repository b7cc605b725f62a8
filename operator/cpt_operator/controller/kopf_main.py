"""The operator's handlers on kopf's default registry, for `kopf run -m cpt_operator.controller.kopf_main`
(used by kopf.testing.KopfRunner in tests/e2e). `cpt operator` is the normal entry point."""

from __future__ import annotations

import kopf

from .handlers import register
from .metrics import Metrics
from .settings import OperatorSettings

register(kopf.get_default_registry(), OperatorSettings.from_env(), Metrics())
