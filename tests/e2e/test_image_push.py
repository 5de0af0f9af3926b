"""`dockyard image push` on a one-host cluster of real processes and the real dockerd.

The CLI and the agent share this machine's dockerd, so the test takes the archive first (as the CLI does),
removes the tag, and pushes: the agent must load it back. Then the real CLI pushes again and the agent
answers that it has the image. The 3-host version runs on the dev cluster (tests/cluster).
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import uuid

from dockyard.cli.images import push_archive, save_local
from dockyard.client import Client
from dockyard.v1 import controller_pb2 as cpb
from tests.e2e.harness import Cluster


def _image_id(reference: str) -> str | None:
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", reference], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else None


async def _push_without_the_local_tag(cluster: Cluster, tag: str) -> list[cpb.PushImageProgress]:
    shown: list[cpb.PushImageProgress] = []
    with tempfile.TemporaryFile() as spool:
        image_id = await save_local(tag, spool)
        await asyncio.to_thread(subprocess.run, ["docker", "rmi", tag], check=True, capture_output=True)
        assert await asyncio.to_thread(_image_id, tag) is None
        async with Client(cluster.address, credentials=cluster.admin(), deadline=60) as client:
            finals = await push_archive(client, tag, image_id, spool, [], shown.append)
    assert any(not p.done for p in shown), "progress comes before the end"
    return finals


def test_an_image_the_node_lacks_is_loaded_and_one_it_has_is_skipped(cluster: Cluster, test_image: str) -> None:
    tag = f"dockyard-push-e2e:{uuid.uuid4().hex[:12]}"
    subprocess.run(["docker", "tag", test_image, tag], check=True, capture_output=True)
    image_id = _image_id(tag)
    try:
        finals = asyncio.run(_push_without_the_local_tag(cluster, tag))
        assert [(p.node_id, p.error, p.already_present) for p in finals] == [(cluster.node_id, "", False)]
        assert _image_id(tag) == image_id, "the agent loaded the image into its Docker"

        pushed = cluster.json("image", "push", tag)
        assert [(row["node_id"], row["result"], row["error"]) for row in pushed] == [(cluster.node_id, "present", "")]

        refused = cluster.cli("image", "push", tag, "--node", "no-such-host", check=False)
        assert refused.returncode == 1
        assert "nodes[0]: 'no-such-host' is no node" in refused.stderr
        missing = cluster.cli("image", "push", f"{tag}-absent", check=False)
        assert missing.returncode == 1 and "is not in this host's Docker" in missing.stderr
    finally:
        subprocess.run(["docker", "rmi", tag], capture_output=True, check=False)
