"""The dockyard command-line interface."""
