"""The Dockyard agent: runs on every host and converges its containers to the controller's assignments."""
