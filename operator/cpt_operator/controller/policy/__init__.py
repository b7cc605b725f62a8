"""The cluster admin's policy: what a tenant's CPTJob may make the operator do.

A platform team installs one operator for many teams; creating a CPTJob must not let a tenant act with the
operator's identity or make pods it could not create itself. `admin` is the policy (Helm values
`policy.*`, given to the operator as JSON), `endpoints` checks a job's S3 endpoint against it (after DNS
resolution), `pods` checks every Ray pod the operator would create against the pod rules (the Pod Security
"restricted" profile by default). A refusal names the field and the rule, in one line (docs/security.md).
"""
