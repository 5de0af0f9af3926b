"""The dispatcher role: agents' sessions, heartbeats, assignments out and task status in."""
