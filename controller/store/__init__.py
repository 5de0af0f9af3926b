"""The controller's transactional, revisioned store of services, nodes and tasks."""
