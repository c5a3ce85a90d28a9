"""Pretext tasks: the registry and every registered task (numpy only)."""
