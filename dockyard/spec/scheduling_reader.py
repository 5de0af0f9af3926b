"""Reading the fields that decide where a service's tasks run and how many: mode, replicas, placement, on_disconnect.

As in field_reader, only shapes, types and values the proto cannot express are checked here; whether
constraints parse, clash or stay within limits is validate_service's job.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf.duration_pb2 import Duration

from dockyard.spec import defaults, rules
from dockyard.spec.display import got, got_string
from dockyard.spec.enum_names import MODES, STRATEGIES
from dockyard.spec.field_reader import FieldReader
from dockyard.spec.fields import closest
from dockyard.spec.paths import index_path, key_path
from dockyard.v1 import types_pb2 as pb

PLACEMENT_FIELDS = ("constraints", "max_replicas_per_node", "strategy")
ON_DISCONNECT_FIELDS = ("stop_after",)
_KEEP = "keep"
_CONSTRAINT_EXAMPLE = '"node.labels.zone == a"'
_DEFAULT_PLACEMENT = pb.Placement(
    max_replicas_per_node=defaults.MAX_REPLICAS_PER_NODE, strategy=defaults.PLACEMENT_STRATEGY
)


class SchedulingReader(FieldReader):
    """Adds the readers of the scheduling fields to the field readers."""

    def mode_and_replicas(self, body: Mapping[object, object], path: str, spec: pb.ServiceSpec) -> None:
        """Reads mode, then replicas, which a global service must leave out."""
        if "mode" in body:
            mode = self.choice(body["mode"], key_path(path, "mode"), MODES, rules.mode_message)
            if mode is not None:
                spec.mode = mode
        replicas_path = key_path(path, "replicas")
        if spec.mode == pb.SERVICE_MODE_GLOBAL:
            spec.replicas = defaults.GLOBAL_REPLICAS
            # Even "replicas: 0" is refused: it suggests a count that a global service does not have.
            if "replicas" in body:
                self.fail(replicas_path, rules.GLOBAL_REPLICAS_MESSAGE)
        elif "replicas" in body:
            replicas = self.uint32(body["replicas"], replicas_path, rules.replicas_message)
            if replicas is not None:
                spec.replicas = replicas

    def placement(self, value: object, path: str, spec: pb.ServiceSpec) -> None:
        """Reads constraints, per-node cap and strategy into spec.placement, which stays unset if all are defaults."""
        if not isinstance(value, dict):
            self.fail(
                path, f"must be a mapping with constraints, max_replicas_per_node and/or strategy, got {got(value)}"
            )
            return
        self.fields(value, path, PLACEMENT_FIELDS)
        placement = pb.Placement()
        placement.CopyFrom(_DEFAULT_PLACEMENT)
        if "constraints" in value:
            placement.constraints.extend(self.constraints(value["constraints"], key_path(path, "constraints")))
        if "max_replicas_per_node" in value:
            where = key_path(path, "max_replicas_per_node")
            cap = self.uint32(value["max_replicas_per_node"], where, rules.max_replicas_per_node_message)
            if cap is not None:
                placement.max_replicas_per_node = cap
        if "strategy" in value:
            strategy = self.choice(value["strategy"], key_path(path, "strategy"), STRATEGIES, rules.strategy_message)
            if strategy is not None:
                placement.strategy = strategy
        if placement != _DEFAULT_PLACEMENT:
            spec.placement.CopyFrom(placement)

    def constraints(self, value: object, path: str) -> list[str]:
        """Reads the list of constraint strings as written."""
        if not isinstance(value, list):
            self.fail(path, f"must be a list of constraints like [{_CONSTRAINT_EXAMPLE}], got {got(value)}")
            return []
        constraints = []
        for i, item in enumerate(value):
            if isinstance(item, str):
                constraints.append(item)
                continue
            message = f"must be a string like {_CONSTRAINT_EXAMPLE}, got {got_string(item)}"
            if isinstance(item, dict):
                # `- node.labels.zone: a` is valid YAML, but a mapping rather than a comparison.
                message += '; compare with == or != rather than ":"'
            self.fail(index_path(path, i), message)
            # A stand-in keeps later indexes in validate_service's paths aligned with the file.
            constraints.append("")
        return constraints

    def on_disconnect(self, value: object, path: str, on_disconnect: pb.OnDisconnect) -> None:
        """Reads "keep" or a mapping with stop_after."""
        if value == _KEEP:
            return
        if not isinstance(value, dict):
            message = f"must be {_KEEP} or a mapping like {{stop_after: 30s}}, got {got(value)}"
            if isinstance(value, str) and closest(value, (_KEEP,)):
                message += f'; did you mean "{_KEEP}"?'
            self.fail(path, message)
            return
        self.fields(value, path, ON_DISCONNECT_FIELDS)
        where = key_path(path, "stop_after")
        if "stop_after" not in value:
            # Another key has just been reported, most likely a misspelt stop_after; once is enough.
            if not value:
                self.fail(where, f"is required; give a duration like 30s, or write on_disconnect: {_KEEP}")
            return
        stop_after = Duration()
        nanos = self.duration(value["stop_after"], where, stop_after)
        if nanos == 0:
            # The proto reads a zero deadline as "keep", the opposite of what was asked for.
            self.fail(where, rules.stop_after_message("0s"))
        elif nanos is not None:
            on_disconnect.stop_after.CopyFrom(stop_after)
