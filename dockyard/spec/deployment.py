"""What one spec file asks an apply for: its services and the stack, networks, volumes, secrets and configs.

Both readers produce it, ours (dockyard.spec.loading.load_deployment_file) and Compose's
(dockyard.spec.compose), and the CLI turns it into an ApplyServiceRequest or a PlanApplyRequest.
Every name in it is cluster-wide already (`<stack>_<name>` for a stack's objects, dockyard.spec.stacks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb


@dataclass(frozen=True)
class Deployment:
    """The services of a file in file order, and the objects the file declares for them (the request's extras)."""

    specs: list[pb.ServiceSpec]
    # The stack every service and object of the file belongs to; "" for none.
    stack: str = ""
    networks: list[cpb.NetworkSpec] = field(default_factory=list)
    volumes: list[cpb.VolumeSpec] = field(default_factory=list)
    # FileSpec.data holds the secret's or config's content, read from the file the spec names.
    secrets: list[cpb.FileSpec] = field(default_factory=list)
    configs: list[cpb.FileSpec] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """The services' cluster-wide names, in file order."""
        return [spec.name for spec in self.specs]

    def extras(self) -> cpb.ApplyServiceRequest:
        """An ApplyServiceRequest holding only the stack and the declared objects, to merge into a request."""
        return cpb.ApplyServiceRequest(
            stack=self.stack,
            networks=self.networks,
            volumes=self.volumes,
            secrets=self.secrets,
            configs=self.configs,
        )
