"""The training loop and the parts it is made of.

`Trainer` (set-up, the loop, the endings), `TrainStep` (one optimizer
step with one host synchronisation), `TrainState` and `RNGState` (checkpointed state of the loop), the
DeepSpeed `engine` configuration, the optional `regularization` penalty, the rank side of an
`interrupt`, and `hooks` (the seam for tests and benchmarks).
"""
