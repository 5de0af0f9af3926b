"""Networking across hosts: Docker bridge networks on the controller's subnets, routes and VXLAN to peers,
isolation rules, and the DNS server for service discovery. See docs/design/network.md."""
