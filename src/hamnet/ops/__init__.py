"""Operator commands: the hamnet CLI, the local tracking/orchestration stack."""
