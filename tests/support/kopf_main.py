"""The operator's handlers on kopf's default registry, for `kopf run -m tests.support.kopf_main`
(kopf.testing.KopfRunner in tests/e2e). `cpt operator` is the product's entry point."""

from __future__ import annotations

import kopf
from cpt_operator.controller.handlers import register
from cpt_operator.controller.metrics import Metrics
from cpt_operator.controller.settings import OperatorSettings

register(kopf.get_default_registry(), OperatorSettings.from_env(), Metrics())
