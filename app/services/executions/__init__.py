"""Executions, one module per job: request, state machine, control, reads, the chain's steps, the sweeps.

The map of which module holds which job is in docs/decisions.md ("Map of the code").
"""
