"""Cluster security: the CA, the join flow and the check of every caller's certificate."""
