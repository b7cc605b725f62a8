"""Launching an attempt on Ray Train: the driver behind `cpt run` and `cpt train`.

The `driver` (claim the run directory, synthesise and prepare the data, run the
Trainer on every worker with Ray Train, retry what is transient), the `failures` it classifies, the
driver's side of `signals`, and the loopback `local_ray` of `cpt run`.
"""
