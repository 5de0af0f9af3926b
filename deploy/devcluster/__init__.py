"""A local multi-host Dockyard cluster: each host a network namespace with its own dockerd and agent.

    cluster = await DevCluster.up(hosts=3)        # prints progress to stderr
    cluster.controller_address                    # e.g. 10.213.0.1:7465
    await cluster.kill("h2")                      # and partition, heal, restart_agent, restart_docker, ...
    await cluster.down()                          # leaves nothing behind; also DevCluster.open(dir).down()

See deploy/devcluster/cluster.py for the layout and the exact meaning of each fault, and
deploy/devcluster/cli.py for `dockyard dev cluster ...`, which drives it from the command line.
"""

from deploy.devcluster.cluster import DEFAULT_IMAGE, DevCluster, find_leftovers, stderr_progress, sweep
from deploy.devcluster.errors import CommandFailed, DevClusterError
from deploy.devcluster.layout import default_state_dir

__all__ = [
    "DEFAULT_IMAGE",
    "CommandFailed",
    "DevCluster",
    "DevClusterError",
    "default_state_dir",
    "find_leftovers",
    "stderr_progress",
    "sweep",
]
