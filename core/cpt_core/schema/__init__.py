"""The CRD and the references, generated from the API models.

The CustomResourceDefinition (`crd`: structural schema, CEL rules,
printer columns) and the references (`docs`: docs/api.md and docs/progress.md).
"""
