"""Validation of CPTJob documents and the recommended-practice warnings.

One function every entry point uses (`validate`: no inline credentials,
the generated schema and its CEL rules, the models), the `recommendations` (warnings, never rejections),
and `problem`, the one shape of every error and warning.
"""
