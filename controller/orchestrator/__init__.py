"""The orchestrator role: keeps each service's tasks at the right count and revision. It never picks nodes."""
