"""Policies: when to sleep, heal, confirm or roll back, pause for heat, suspend the node."""
