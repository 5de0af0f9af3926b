"""Deployment tooling that is not part of the orchestrator itself, such as the local multi-host dev cluster."""
