"""Checkpoints: saving, committing, verifying and resuming the whole training state.

The storage protocol of a run directory (`store`: save, background upload, manifest, the
COMMITTED marker, fencing, retention, setting damaged ones aside), the trainer's `checkpointer` part that
gathers the `Stateful` parts and decides when a checkpoint commits, finding the `resume` point every rank
verified (and resizing by universal conversion), and the `snapshot` engine that keeps the stall to a copy.
"""
