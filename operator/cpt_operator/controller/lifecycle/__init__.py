"""The CPTJob lifecycle as pure functions: observed state in, decision out.

`reconcile` (the state machine: observed -> next status, actions, events), the
`decision` vocabulary it speaks, the status `conditions` helpers, and the `rejection` of a spec the models
refuse. No I/O; every transition is table-tested.
"""
