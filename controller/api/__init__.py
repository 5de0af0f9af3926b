"""The api role: validates requests and writes desired state. Nothing else."""
