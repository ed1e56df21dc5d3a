"""Prefect flows: thin wrappers mapping engine calls to tasks, schedules and events."""
