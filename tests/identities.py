"""Node identities for agents that need one but no controller to join (unit tests of a cut-off agent)."""

from __future__ import annotations

import datetime
from pathlib import Path

from agent.identity import NODE_STEM, Membership, save_membership
from dockyard import pki


def joined_state(state_dir: Path, controller: str, node_id: str = "node-under-test") -> Membership:
    """Writes what `dockyard-agent join` would (a node certificate of a throwaway CA, cluster.json); returns it."""
    now = datetime.datetime.now(datetime.UTC)
    ca = pki.Authority(pki.create_ca("test-cluster", now))
    credentials = pki.Credentials(ca.ca_pem, ca.issue(pki.ROLE_AGENT, node_id, now, pki.DEFAULT_CERT_LIFETIME))
    credentials.save(state_dir, NODE_STEM)
    membership = Membership(node_id=node_id, cluster_id=ca.cluster_id, controller=controller)
    save_membership(state_dir, membership)
    return membership
