"""Generated from the API models: the CustomResourceDefinition (`crd`: structural schema, CEL rules,
printer columns) and the references (`docs`: docs/api.md and docs/progress.md).
"""
