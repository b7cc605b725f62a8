"""Development machinery shared by tests/, bench/ and hack/ -- never imported by the product.

Real components and faithful stand-ins for what cannot run here: `seaweed` (a SeaweedFS S3
server), `k8s_emulator` (KMock's Kubernetes API emulator made faithful), `kuberay_standin` (runs
each RayJob's entrypoint for real), `cluster` (the operator's world: emulator + S3 + jobs),
`chart` (the Helm chart rendered by a real helm), `jobs` (CPTJobs and corpora for tests and
benchmarks). Test-only runners and hooks stay in tests/support.
"""
