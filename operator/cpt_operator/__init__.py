"""cpt-operator: continued pre-training of language models, Kubernetes-native.

`cpt_operator.api` holds the CPTJob API (typed models, CRD generation, validation),
`cpt_operator.storage` the storage layer shared with the trainer, `cpt_operator.cli` the
`cpt` command. The kopf control plane lives in `cpt_operator.controller` and is only
imported by `cpt operator`.
"""

__version__ = "0.1.0"
