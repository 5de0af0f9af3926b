"""The Dockyard controller: stores desired state, schedules tasks and talks to agents."""
