"""Generated from protos/dockyard/v1; do not edit."""
