"""Cluster networks on the controller: subnet allocation, the role that keeps Network.subnets, DNS records."""
