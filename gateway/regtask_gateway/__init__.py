"""The runner gateway: the only door from a task's Job to the platform (see ARCHITECTURE.md)."""
