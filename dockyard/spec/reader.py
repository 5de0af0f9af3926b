"""Reading a parsed YAML document into pb.ServiceSpecs, field by field, with every problem found in it.

The reader walks a service's fields in the table's order (dockyard.spec.schema). For each value it
checks what only a file can get wrong (shapes, types, unit syntax, text a proto cannot hold, an
explicit 0 that the proto would read as "not set"), then hands the value to the same check that
validate_service runs on a proto. A value refused by either keeps its default and goes no further,
so one mistake is reported once and the problems come out in field order as they are found.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.protobuf.duration_pb2 import Duration

from dockyard.spec import schema, stacks, validation
from dockyard.spec.deployment import Deployment
from dockyard.spec.issues import (
    Issue,
    closest,
    describe,
    got,
    got_number,
    got_string,
    index_path,
    key_path,
    quote,
    service_path,
    unknown_fields,
)
from dockyard.spec.schema import Bounded, Field, Ranged
from dockyard.spec.units import (
    DURATION_SHAPE,
    MAX_BYTES,
    MAX_UINT32,
    MOUNT_SHAPE,
    PORT_SHAPE,
    byte_size,
    format_cpus,
    parse_bytes,
    parse_duration_nanos,
    parse_mount,
    parse_port,
    seconds_to_nanos,
)
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

Number = TypeVar("Number", bound=int | str)
_Probe = pb.HttpProbe | pb.TcpProbe

SERVICE_FIELDS = schema.children("")
# Spellings people bring from Docker Compose, where difflib alone would not find our field.
_SERVICE_HINTS = {
    "environment": 'did you mean "env"?',
    "deploy": "write mode, replicas, placement, resources, restart, update and rollback directly under the service",
    "restart_policy": 'did you mean "restart"?',
    "update_config": 'did you mean "update"?',
    "rollback_config": 'did you mean "rollback"?',
}
# Compose's key for a check turned off; it reads as test: ["NONE"].
_DISABLE = "disable"
_HEALTH_FIELDS = (*schema.children("healthcheck"), _DISABLE)
_HEALTH_EXAMPLE = '{test: ["CMD", "pg_isready"], interval: 10s}'
_TIMINGS = (schema.HEALTH_INTERVAL, schema.HEALTH_TIMEOUT)
_START_TIMINGS = (schema.HEALTH_START_PERIOD, schema.HEALTH_START_INTERVAL)
# Compose's long form of depends_on also has these; only Compose's default for `required` means
# what Dockyard does.
_REQUIRED = "required"
_RESTART = "restart"
_DEPENDENCY_FIELDS = (*schema.children("depends_on.*"), _REQUIRED)
_DEPENDS_ON_EXAMPLE = "[db] or {db: {condition: service_healthy}}"
_KEEP = "keep"
_CONSTRAINT_EXAMPLE = '"node.labels.zone == a"'
_DEFAULT_PLACEMENT = pb.Placement(
    max_replicas_per_node=schema.MAX_REPLICAS_PER_NODE.default, strategy=schema.STRATEGY.default
)
# Compose's name for mounts, read as mounts.
_VOLUMES = "volumes"
_MOUNTS_EXAMPLE = '["db-data:/var/lib/postgresql/data", "/srv/www:/usr/share/nginx/html:ro"]'
# The top-level sections that declare a file's objects, with the keys each object may have.
_SECTION_FIELDS = {
    "networks": ("name", "external", "labels", "internal"),
    "volumes": ("name", "external", "labels"),
    "secrets": ("name", "external", "file", "labels"),
    "configs": ("name", "external", "file", "content", "labels"),
}
_KINDS = {"networks": "network", "volumes": "volume", "secrets": "secret", "configs": "config"}
_TOP_LEVEL = ("stack", "services", *_SECTION_FIELDS)
_STACK_EXAMPLE = '"shop"'
# Compose's top-level keys, where our file has another.
_FILE_HINTS = {
    "name": 'did you mean "stack"? (Compose\'s project name is the stack)',
    "version": "remove it; the file has no version",
}


@dataclass
class _Declared:
    """An object a file declares in a top-level section, under the key services refer to it by."""

    name: str  # cluster-wide
    external: bool = False  # it exists already: the apply does not make it
    labels: dict[str, str] = field(default_factory=dict)
    internal: bool = False
    data: bytes = b""


# Reads a file a spec names (a secret's or config's `file`), at most schema.FILE_BYTES.maximum + 1 bytes;
# raises OSError when it cannot.
ReadFile = Callable[[str], bytes]


def _unchecked(key: str, value: str, path: str) -> Iterable[Issue]:
    return ()


def _no_files(name: str) -> bytes:
    raise OSError(f"no files can be read here, so {name!r} cannot")


def read_document(data: object, source: str) -> tuple[list[pb.ServiceSpec], list[Issue]]:
    """Converts a parsed document into specs in file order, with every problem found in it, in order.

    `source` names the file in problems about the document as a whole. The specs are only
    meaningful when no issues are returned.
    """
    deployment, issues = read_deployment(data, source, _no_files)
    return deployment.specs, issues


def read_deployment(data: object, source: str, read_file: ReadFile) -> tuple[Deployment, list[Issue]]:
    """Converts a parsed document into its services and declared objects, with every problem found, in order.

    `read_file` reads the files its secrets and configs name. The result is only meaningful when no
    issues are returned.
    """
    reader = _Reader(read_file)
    specs = reader.document(data, source)
    # Cycles run between services, so they are found once every service is read.
    reader.issues.extend(validation.depends_on_issues([spec for spec in specs if spec.name]))
    made = {section: [d for d in found.values() if not d.external] for section, found in reader.declared.items()}
    deployment = Deployment(
        specs,
        stack=reader.stack,
        networks=[cpb.NetworkSpec(name=d.name, labels=d.labels, internal=d.internal) for d in made["networks"]],
        volumes=[cpb.VolumeSpec(name=d.name, labels=d.labels) for d in made["volumes"]],
        secrets=[cpb.FileSpec(name=d.name, labels=d.labels, data=d.data) for d in made["secrets"]],
        configs=[cpb.FileSpec(name=d.name, labels=d.labels, data=d.data) for d in made["configs"]],
    )
    return deployment, reader.issues


def default_spec(name: str) -> pb.ServiceSpec:
    """A spec holding the table's defaults explicitly, so loaded specs compare equal field by field."""
    spec = pb.ServiceSpec(name=name, replicas=schema.REPLICAS.default, mode=schema.MODE.default)
    spec.resources.SetInParent()
    spec.restart.condition = schema.RESTART_CONDITION.default
    spec.restart.delay.FromNanoseconds(schema.RESTART_DELAY.default)
    spec.restart.max_attempts = schema.RESTART_MAX_ATTEMPTS.default
    spec.restart.window.FromNanoseconds(schema.RESTART_WINDOW.default)
    spec.stop_grace_period.FromNanoseconds(schema.STOP_GRACE_PERIOD.default)
    # placement and on_disconnect stay unset while they hold only defaults: the scheduler skips an
    # unset placement on its hot path, and "keep" is the absence of a stop_after deadline.
    return spec


class _Reader:
    """Reads values and collects the problems found in them, in the order found."""

    def __init__(self, read_file: ReadFile = _no_files) -> None:
        self.issues: list[Issue] = []
        self.read_file = read_file
        # The file's stack, and what its top-level sections declare, by the names services use.
        self.stack = ""
        self.declared: dict[str, dict[str, _Declared]] = {section: {} for section in _SECTION_FIELDS}

    def fail(self, path: str, message: str) -> None:
        """Records a problem at `path`."""
        self.issues.append(Issue(path, message))

    def passes(self, found: Iterable[Issue]) -> bool:
        """Records the problems a check found; tells whether there were none."""
        before = len(self.issues)
        self.issues.extend(found)
        return len(self.issues) == before

    def known(self, mapping: Mapping[object, object], path: str, section: str) -> None:
        """Records the keys of `mapping` that the table does not list in `section`."""
        self.issues.extend(unknown_fields(mapping, path, schema.children(section)))

    # --- The document and its services --------------------------------------------------------------

    def document(self, data: object, source: str) -> list[pb.ServiceSpec]:
        """Reads the top level and every service under it."""
        if data is None:
            self.fail(source, 'the file is empty; it needs a "services:" mapping with at least one service')
            return []
        if not isinstance(data, dict):
            self.fail(source, f'must be a mapping with a top-level "services" key, got {describe(data)}')
            return []
        # Top-level "x-" keys are free for YAML anchors to share settings between services, as in Compose.
        top_level = {key: None for key in data if not str(key).startswith("x-")}
        self.issues.extend(unknown_fields(top_level, "", _TOP_LEVEL, _FILE_HINTS))
        self.stack = self.file_stack(data)
        for section in _SECTION_FIELDS:
            if section in data:
                self.declare(section, data[section])
        if "services" not in data:
            self.fail("services", 'is required; put each service under a top-level "services:" mapping')
            return []
        services = data["services"]
        if services is None or services == {}:
            self.fail("services", "must define at least one service")
            return []
        if not isinstance(services, dict):
            self.fail("services", f"must be a mapping from service names to services, got {describe(services)}")
            return []
        specs = []
        for name, body in services.items():
            if not isinstance(name, str):
                self.fail("services", f"service name {describe(name)} must be a string; put it in quotes")
                continue
            spec = self.service(name, body)
            if spec is not None:
                specs.append(spec)
        return specs

    def service(self, name: str, body: object) -> pb.ServiceSpec | None:
        """Reads one service's fields in the table's order."""
        path = service_path(name)
        if not isinstance(body, dict):
            self.fail(path, f'must be a mapping of service fields with at least "image", got {describe(body)}')
            return None
        name_ok = self.passes(validation.name_issues(name, path))
        known = {key: item for key, item in body.items() if key != _VOLUMES}
        self.issues.extend(unknown_fields(known, path, SERVICE_FIELDS, _SERVICE_HINTS))
        # An invalid name may not even be storable (a lone surrogate); the spec is only kept when all is well.
        spec = default_spec(stacks.scoped(self.stack, name) if name_ok else "")
        spec.stack = self.stack
        self.image(body, key_path(path, "image"), spec)
        if "entrypoint" in body:
            spec.entrypoint.extend(self.command(body["entrypoint"], key_path(path, "entrypoint")))
        if "command" in body:
            spec.command.extend(self.command(body["command"], key_path(path, "command")))
        if "env" in body:
            self.string_map(body["env"], key_path(path, "env"), "env", "NAME", validation.env_issues, spec.env)
        if "hostname" in body:
            self.hostname(body["hostname"], key_path(path, "hostname"), spec)
        if "ports" in body:
            spec.ports.extend(self.ports(body["ports"], key_path(path, "ports")))
        self.mode_and_replicas(body, path, spec)
        if "placement" in body:
            self.placement(body["placement"], key_path(path, "placement"), spec)
        if "resources" in body:
            self.resources(body["resources"], key_path(path, "resources"), spec.resources)
        if "labels" in body:
            where = key_path(path, "labels")
            self.string_map(body["labels"], where, "labels", "key", validation.label_issues, spec.labels)
        self.files(body, path, spec)
        if "restart" in body:
            self.restart(body["restart"], key_path(path, "restart"), spec)
        if "healthcheck" in body:
            self.healthcheck(body["healthcheck"], key_path(path, "healthcheck"), spec.healthcheck)
        for block in ("update", "rollback"):
            if block in body:
                self.update_config(body[block], key_path(path, block), block, spec)
        if "depends_on" in body:
            self.depends_on(body["depends_on"], key_path(path, "depends_on"), name, spec.depends_on)
        if "stop_grace_period" in body:
            where = key_path(path, "stop_grace_period")
            nanos = self.duration(body["stop_grace_period"], where, schema.STOP_GRACE_PERIOD)
            if nanos is not None:
                spec.stop_grace_period.FromNanoseconds(nanos)
        if "on_disconnect" in body:
            self.on_disconnect(body["on_disconnect"], key_path(path, "on_disconnect"), spec.on_disconnect)
        if "stack" in body:
            self.service_stack(body["stack"], key_path(path, "stack"))
        self.passes(validation.size_issues(spec, path))
        return spec

    # --- The stack and its objects ---------------------------------------------------------------------

    def file_stack(self, data: Mapping[object, object]) -> str:
        """The file's stack: the top-level `stack`, or the one stack its services name; "" for none."""
        if "stack" in data:
            value = data["stack"]
            if not isinstance(value, str):
                self.fail("stack", f"must be a stack name like {_STACK_EXAMPLE}, got {got_string(value)}")
            elif self.text(value, "stack") and self.passes(validation.stack_issues(value, "stack")):
                return value
            return ""
        services = data.get("services")
        named = {
            body["stack"]
            for body in (services.values() if isinstance(services, dict) else ())
            if isinstance(body, dict) and isinstance(body.get("stack"), str)
        }
        stack = named.pop() if len(named) == 1 else ""
        return stack if self.text(stack, "stack") and stacks.stack_problem(stack) is None else ""

    def service_stack(self, value: object, path: str) -> None:
        """Checks a service's own `stack`, which must be the file's: one file deploys one stack."""
        if not isinstance(value, str):
            self.fail(path, f"must be a stack name like {_STACK_EXAMPLE}, got {got_string(value)}")
        elif value == self.stack or not self.text(value, path) or not self.passes(validation.stack_issues(value, path)):
            return
        elif self.stack:
            self.fail(path, f"is {quote(value)}, but the file deploys stack {quote(self.stack)}; remove it")
        else:
            self.fail(path, 'the services of one file belong to one stack; give it once, as the top-level "stack"')

    def declare(self, section: str, value: object) -> None:
        """Reads a top-level section: the networks, volumes, secrets or configs the file's services use."""
        kind = _KINDS[section]
        if value is None:
            return
        if not isinstance(value, dict):
            self.fail(section, f"must be a mapping from {kind} names to their settings, got {got(value)}")
            return
        for key, body in value.items():
            if not isinstance(key, str):
                self.fail(section, f"{kind} name {describe(key)} must be a string; put it in quotes")
                continue
            where = key_path(section, key)
            if self.text(key, where) and (declared := self.declaration(section, key, body, where)) is not None:
                first = next((k for k, d in self.declared[section].items() if d.name == declared.name), None)
                if first is not None:
                    self.fail(
                        where,
                        f"is named {quote(declared.name)} in the cluster, as {key_path(section, first)} is already; "
                        "give each its own name",
                    )
                    continue
                self.declared[section][key] = declared

    def declaration(self, section: str, key: str, body: object, path: str) -> _Declared | None:
        """Reads one declared object; None when its name is refused."""
        kind = _KINDS[section]
        if body is None:
            body = {}
        if not isinstance(body, dict):
            example = "{file: ./db_password.txt}" if section in ("secrets", "configs") else "{labels: {team: web}}"
            self.fail(path, f"must be a mapping like {example}, or empty, got {got(body)}")
            return None
        self.issues.extend(unknown_fields(body, path, _SECTION_FIELDS[section]))
        declared = _Declared(name=stacks.scoped(self.stack, key))
        if "external" in body:
            declared.external = self.boolean(body["external"], key_path(path, "external")) is True
            if declared.external:
                declared.name = key  # an existing object is named as it is, not scoped
        name_path = path
        if "name" in body:
            name_path = key_path(path, "name")
            if not isinstance(body["name"], str):
                self.fail(name_path, f"must be a {kind} name, got {got_string(body['name'])}")
                return None
            if not self.text(body["name"], name_path):
                return None
            declared.name = body["name"]
        if not self.passes(validation.object_name_issues(declared.name, name_path, kind)):
            return None
        if "labels" in body:
            where = key_path(path, "labels")
            self.string_map(body["labels"], where, "labels", "key", validation.label_issues, declared.labels)
        if "internal" in body:
            declared.internal = self.boolean(body["internal"], key_path(path, "internal")) is True
        given = [source for source in ("file", "content") if source in body]
        if declared.external:
            for extra in (*given, *(k for k in ("labels", "internal") if k in body)):
                self.fail(
                    key_path(path, extra), f"cannot be given for an external {kind}, which exists already; remove it"
                )
        elif section in ("secrets", "configs"):
            if not given:
                content = " or content: TEXT" if section == "configs" else ""
                self.fail(
                    path,
                    f"needs file: PATH (the file holding the {kind}){content}, or external: true for one made "
                    f"with `dockyard {kind} create`",
                )
            elif len(given) > 1:
                self.fail(key_path(path, "content"), "cannot be combined with file; keep one of them")
            elif given == ["file"]:
                declared.data = self.file_data(body["file"], key_path(path, "file"))
            elif not isinstance(content := body["content"], str):
                self.fail(key_path(path, "content"), f"must be the config's text, got {got_string(content)}")
            elif self.text(content, key_path(path, "content")):
                declared.data = content.encode()
                self.file_size(len(declared.data), key_path(path, "content"), "the content")
        return declared

    def file_data(self, value: object, path: str) -> bytes:
        """Reads the file a secret or config names; b"" when it cannot."""
        if not isinstance(value, str) or not value:
            self.fail(path, f'must be the path of a file, like "./db_password.txt", got {got_string(value)}')
            return b""
        if not self.text(value, path):
            return b""
        try:
            data = self.read_file(value)
        except OSError as exc:
            self.fail(
                path,
                f"cannot read {describe(value)}: {exc.strerror or exc}; give a readable file (a relative path "
                "starts at the spec file's folder)",
            )
            return b""
        return data if self.file_size(len(data), path, describe(value)) else b""

    def file_size(self, size: int, path: str, what: str) -> bool:
        """Tells whether data of `size` bytes fits a secret or config; records the problem otherwise."""
        limit = schema.FILE_BYTES
        if size <= limit.maximum:
            return True
        self.fail(path, f"{what} is larger than {limit.shown}, the most a secret or config holds; make it smaller")
        return False

    def resolve(self, section: str, name: str, path: str) -> str:
        """The cluster-wide name a service's reference means: the declared object's, else the name as written.

        A name the file does not declare but nearly does is most likely a typo, and is refused.
        """
        declared = self.declared[section].get(name)
        if declared is not None:
            return declared.name
        if section == "networks" and name == stacks.DEFAULT_NETWORK and self.stack:
            return stacks.default_network(self.stack)
        if (guess := closest(name, list(self.declared[section]))) is not None:
            kind = _KINDS[section]
            self.fail(
                path,
                f"{quote(name)} is not declared under the top-level {section}; did you mean {quote(guess)}? "
                f"(a {kind} that exists outside the file is declared with external: true)",
            )
        return name

    # --- Mounts, networks, secrets and configs -----------------------------------------------------------

    def files(self, body: Mapping[object, object], path: str, spec: pb.ServiceSpec) -> None:
        """Reads mounts (or Compose's volumes), networks, secrets and configs; no two may share a target."""
        targets = validation.Targets()
        given = [key for key in ("mounts", _VOLUMES) if key in body]
        if len(given) > 1:
            self.fail(key_path(path, _VOLUMES), 'is Compose\'s name for "mounts"; write one of them')
        elif given:
            spec.mounts.extend(self.mounts(body[given[0]], key_path(path, given[0]), given[0], targets))
        if "networks" in body:
            spec.networks.extend(self.networks(body["networks"], key_path(path, "networks")))
        for section, place in (("secrets", schema.secret_target), ("configs", schema.config_target)):
            if section in body:
                refs = self.file_refs(body[section], key_path(path, section), section, place, targets)
                getattr(spec, section).extend(refs)

    def mounts(self, value: object, path: str, section: str, targets: validation.Targets) -> list[pb.Mount]:
        """Reads the list of mounts, in the short syntax or as mappings."""
        if not isinstance(value, list):
            self.fail(path, f"must be a list of mounts like {_MOUNTS_EXAMPLE}, got {got(value)}")
            return []
        mounts = []
        for i, item in enumerate(value):
            where = index_path(path, i)
            mount = self.mount(item, where)
            if (
                mount is not None
                and self.passes(validation.mount_issues(mount, where))
                and self.passes(targets.claim(mount.target, f"{section}[{i}]", key_path(where, "target")))
            ):
                mounts.append(mount)
        return mounts

    def mount(self, value: object, path: str) -> pb.Mount | None:
        """Reads one mount; a declared volume's source becomes its cluster-wide name, with its labels."""
        mount = pb.Mount()
        if isinstance(value, str):
            try:
                kind, mount.source, mount.target, mount.read_only = parse_mount(value)
            except ValueError as exc:
                self.fail(path, str(exc))
                return None
            mount.type = schema.MOUNT_TYPE.choices[kind]
        elif isinstance(value, dict):
            if not self.mount_fields(value, path, mount):
                return None
        else:
            self.fail(path, f"{MOUNT_SHAPE}, got {got(value)}")
            return None
        if mount.type != pb.Mount.TYPE_VOLUME or not mount.source:
            return mount
        declared = self.declared["volumes"].get(mount.source)
        if declared is None:
            mount.source = self.resolve("volumes", mount.source, key_path(path, "source"))
        else:
            mount.source = declared.name
            if not mount.volume_labels:
                mount.volume_labels.update(declared.labels)
        return mount

    def mount_fields(self, value: Mapping[object, object], path: str, mount: pb.Mount) -> bool:
        """Reads the long form of a mount into `mount`; tells whether it can be checked further."""
        self.known(value, path, "mounts[]")
        ok = True
        mount.type = schema.MOUNT_TYPE.default
        if "type" in value:
            field = schema.MOUNT_TYPE
            kind = self.choice(value["type"], key_path(path, "type"), field, self.choice_wording(field))
            ok = kind is not None
            mount.type = kind if kind is not None else mount.type
        for key in ("source", "target"):
            if key not in value:
                continue
            item = value[key]
            if not isinstance(item, str):
                self.fail(key_path(path, key), f"must be a string, got {got_string(item)}")
                ok = False
            elif self.text(item, key_path(path, key)):
                setattr(mount, key, item)
            else:
                ok = False
        if "target" not in value:
            self.fail(key_path(path, "target"), 'is required; give the absolute path in the container, like "/data"')
            ok = False
        if "read_only" in value:
            mount.read_only = self.boolean(value["read_only"], key_path(path, "read_only")) is True
        if "labels" in value:
            # Checked with the rest of the mount (validation.mount_issues), in the table's order.
            where = key_path(path, "labels")
            self.string_map(value["labels"], where, "labels", "key", _unchecked, mount.volume_labels)
        if "tmpfs" in value:
            ok = self.tmpfs(value["tmpfs"], key_path(path, "tmpfs"), mount) and ok
        return ok

    def tmpfs(self, value: object, path: str, mount: pb.Mount) -> bool:
        """Reads a tmpfs mount's options."""
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping like {{size: 64MiB}}, got {got(value)}")
            return False
        self.known(value, path, "mounts[].tmpfs")
        if "size" not in value:
            return True
        try:
            mount.tmpfs_size_bytes = byte_size(value["size"])
        except ValueError as exc:
            self.fail(key_path(path, "size"), str(exc))
            return False
        return True

    def networks(self, value: object, path: str) -> list[str]:
        """Reads the list of networks by name; a declared network's name becomes its cluster-wide one."""
        if not isinstance(value, list):
            self.fail(path, f"must be a list of network names like [front, back], got {got(value)}")
            return []
        names, networks = validation.Names("networks"), []
        for i, item in enumerate(value):
            where = index_path(path, i)
            if not isinstance(item, str):
                self.fail(where, f"must be a network name, got {got_string(item)}")
                continue
            if not self.text(item, where):
                continue
            name = self.resolve("networks", item, where)
            if self.passes(validation.object_name_issues(name, where, "network")) and self.passes(
                names.claim(name, i, where)
            ):
                networks.append(name)
        return networks

    def file_refs(
        self,
        value: object,
        path: str,
        section: str,
        place: Callable[[pb.FileRef], str],
        targets: validation.Targets,
    ) -> list[pb.FileRef]:
        """Reads a service's secrets or configs: names, or mappings with source, target, uid, gid and mode."""
        kind = _KINDS[section]
        if not isinstance(value, list):
            self.fail(
                path,
                f"must be a list of {kind} names, or of mappings like {{source: db_password, mode: 0400}}, "
                f"got {got(value)}",
            )
            return []
        refs = []
        for i, item in enumerate(value):
            where = index_path(path, i)
            ref = self.file_ref(item, where, section)
            if (
                ref is not None
                and self.passes(validation.file_ref_issues(ref, where, section))
                and self.passes(targets.claim(place(ref), f"{section}[{i}]", key_path(where, "target")))
            ):
                refs.append(ref)
        return refs

    def file_ref(self, value: object, path: str, section: str) -> pb.FileRef | None:
        """Reads one secret or config of a service; None when it cannot be checked further."""
        kind = _KINDS[section]
        body: Mapping[object, object]
        if isinstance(value, str):
            body = {"source": value}
        elif isinstance(value, dict):
            self.known(value, path, f"{section}[]")
            body = value
            if "source" not in body:
                self.fail(key_path(path, "source"), f"is required; name the {kind}")
                return None
        else:
            self.fail(path, f"must be a {kind} name or a mapping with source and target, got {got(value)}")
            return None
        source = body["source"]
        where = path if isinstance(value, str) else key_path(path, "source")
        if not isinstance(source, str):
            self.fail(where, f"must be a {kind} name, got {got_string(source)}")
            return None
        if not self.text(source, where):
            return None
        ref = pb.FileRef(name=self.resolve(section, source, where))
        if "target" in body:
            target = body["target"]
            if not isinstance(target, str):
                self.fail(key_path(path, "target"), f"must be a path, got {got_string(target)}")
                return None
            if not self.text(target, key_path(path, "target")):
                return None
            ref.target = target
        elif ref.name != source:
            # In the container the file keeps the name the file gave it, as with `docker stack deploy`.
            ref.target = source if section == "secrets" else f"/{source}"
        for key in ("uid", "gid"):
            if key in body and (number := self.owner(body[key], key_path(path, key))) is not None:
                setattr(ref, key, number)
        if "mode" in body and (mode := self.mode(body["mode"], key_path(path, "mode"))) is not None:
            ref.mode = mode
        return ref

    def owner(self, value: object, path: str) -> int | None:
        """Reads a uid or gid: a number, or a string of digits as Compose writes them."""
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        return self.uint32(value, path, lambda shown: f"must be a numeric id from 0 to {MAX_UINT32}, got {shown}")

    def mode(self, value: object, path: str) -> int | None:
        """Reads permission bits: an octal number (0440), or a string of octal digits ("0440")."""
        if isinstance(value, str) and value and all(c in "01234567" for c in value):
            return int(value, 8)
        if isinstance(value, str):
            self.fail(path, f"must be octal permission bits like 0440, got {describe(value)}")
            return None
        return self.uint32(value, path, lambda shown: f"must be permission bits like 0440, got {shown}")

    def hostname(self, value: object, path: str, spec: pb.ServiceSpec) -> None:
        """Reads the containers' hostname."""
        if not isinstance(value, str):
            self.fail(path, f'must be a host name like "db-1", got {got_string(value)}')
        elif self.text(value, path) and self.passes(validation.hostname_issues(value, path)):
            spec.hostname = value

    # --- Text -------------------------------------------------------------------------------------------

    def text(self, value: str, path: str) -> bool:
        """Tells whether a string can be stored; records the lone surrogate that stops it otherwise."""
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            # YAML's "\ud83d\ude00" escapes give two halves rather than one character.
            self.fail(
                path,
                f"is not valid Unicode text: it holds the lone surrogate U+{ord(value[exc.start]):04X}; "
                "write the character itself, or escape it with \\U and eight hex digits",
            )
            return False
        return True

    def image(self, body: Mapping[object, object], path: str, spec: pb.ServiceSpec) -> None:
        """Reads the required image reference."""
        if "image" not in body:
            self.fail(path, f"is required; name the container image to run, like {validation.IMAGE_EXAMPLE}")
        elif not isinstance(image := body["image"], str):
            self.fail(path, f"must be a string like {validation.IMAGE_EXAMPLE}, got {describe(image)}")
        elif self.text(image, path) and self.passes(validation.image_issues(image, path)):
            spec.image = image

    def command(self, value: object, path: str) -> list[str]:
        """Reads a command given as a list of arguments or as one string split like a shell would."""
        if isinstance(value, str):
            try:
                words = shlex.split(value)
            except ValueError as exc:
                reason = str(exc).lower()
                self.fail(path, f"cannot be split into words ({reason}); fix the quoting or write a list")
                return []
        elif isinstance(value, list):
            words = value
        else:
            self.fail(path, f"must be a list of strings or a string, got {got(value)}")
            return []
        arguments = []
        for i, argument in enumerate(words):
            where = index_path(path, i)
            if not isinstance(argument, str):
                self.fail(where, f"must be a string, got {got_string(argument)}")
            elif self.text(argument, where) and self.passes(validation.argument_issues(argument, where)):
                arguments.append(argument)
        return arguments

    def string_map(
        self,
        value: object,
        path: str,
        field: str,
        word: str,
        check: Callable[[str, str, str], Iterable[Issue]],
        target: MutableMapping[str, str],
    ) -> None:
        """Reads env or labels, given as a mapping or as a list of "NAME=value" strings, into `target`."""
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    self.fail(path, f"{word} {describe(key)} must be a string; put it in quotes")
                elif not isinstance(item, str):
                    self.fail(key_path(path, key), f"must be a string, got {got_string(item)}")
                else:
                    self.entry(key, item, key_path(path, key), check, target)
            return
        if not isinstance(value, list):
            self.fail(
                path,
                f'must be a mapping of {word}: value or a list of "{word}=value" strings, got {got(value)}',
            )
            return
        first_index: dict[str, int] = {}
        for i, entry in enumerate(value):
            where = index_path(path, i)
            if not isinstance(entry, str):
                self.fail(where, f'must be a "{word}=value" string, got {got_string(entry)}')
                continue
            key, equals, item = entry.partition("=")
            if not equals:
                self.fail(
                    where,
                    f"must have the form {word}=value, got {describe(entry)}; "
                    f"write {quote(entry + '=')} for an empty value",
                )
            elif key in first_index:
                self.fail(where, f"{quote(key)} is already set by {field}[{first_index[key]}]; remove one of them")
            else:
                first_index[key] = i
                self.entry(key, item, key_path(path, key), check, target)

    def entry(
        self,
        key: str,
        item: str,
        path: str,
        check: Callable[[str, str, str], Iterable[Issue]],
        target: MutableMapping[str, str],
    ) -> None:
        """Checks one env variable or label and stores it when it passes."""
        if self.text(key, path) and self.text(item, path) and self.passes(check(key, item, path)):
            target[key] = item

    # --- Ports ------------------------------------------------------------------------------------------

    def ports(self, value: object, path: str) -> list[pb.PortMapping]:
        """Reads the list of published ports."""
        if not isinstance(value, list):
            self.fail(path, f'must be a list of ports like "8080:80/tcp", got {got(value)}')
            return []
        host_ports = validation.HostPorts()
        ports = []
        for i, item in enumerate(value):
            port = self.port(item, index_path(path, i), i, host_ports)
            if port is not None:
                ports.append(port)
        return ports

    def port(self, value: object, path: str, index: int, host_ports: validation.HostPorts) -> pb.PortMapping | None:
        """Reads one port in the short syntax, as a bare container port, or as a mapping."""
        published: object = schema.PORT_PUBLISHED.default
        protocol: object = schema.PORT_PROTOCOL.default
        target: object = None
        if isinstance(value, int) and not isinstance(value, bool):
            target = value
        elif isinstance(value, str):
            try:
                published, target, written = parse_port(value)
            except ValueError as exc:
                self.fail(path, str(exc))
                return None
            protocol = written if written is not None else protocol
        elif isinstance(value, dict):
            self.known(value, path, "ports[]")
            published = value.get("published", published)
            target = value.get("target")
            protocol = value.get("protocol", protocol)
        else:
            self.fail(path, f"{PORT_SHAPE}, got {describe(value)}")
            return None
        port = pb.PortMapping()
        where = key_path(path, "published")
        host = self.uint32(published, where, validation.published_port_message)
        host_ok = host is not None and self.passes(validation.published_issues(host, where))
        if host is not None and host_ok:
            port.host_port = host
        where = key_path(path, "target")
        if target is None:
            self.fail(where, "is required; give the port the container listens on")
        else:
            container = self.uint32(target, where, validation.target_port_message)
            if container is not None and self.passes(validation.target_issues(container, where)):
                port.container_port = container
        where = key_path(path, "protocol")
        if not isinstance(protocol, str):
            self.fail(where, validation.protocol_message(got(protocol)))
        elif self.text(protocol, where) and self.passes(validation.protocol_issues(protocol, where)):
            port.protocol = protocol
        if host_ok and port.protocol:
            self.passes(host_ports.claim(port, index, path))
        return port

    # --- Scheduling ---------------------------------------------------------------------------------------

    def mode_and_replicas(self, body: Mapping[object, object], path: str, spec: pb.ServiceSpec) -> None:
        """Reads mode, then replicas, which a global service must leave out."""
        if "mode" in body:
            mode = self.choice(body["mode"], key_path(path, "mode"), schema.MODE, validation.mode_message)
            if mode is not None:
                spec.mode = mode
        replicas_path = key_path(path, "replicas")
        if spec.mode == pb.SERVICE_MODE_GLOBAL:
            spec.replicas = 0
            # Even "replicas: 0" is refused: it suggests a count that a global service does not have.
            if "replicas" in body:
                self.fail(replicas_path, validation.GLOBAL_REPLICAS_MESSAGE)
        elif "replicas" in body:
            replicas = self.uint32(body["replicas"], replicas_path, validation.replicas_message)
            if replicas is not None and self.passes(validation.replicas_issues(spec.mode, replicas, replicas_path)):
                spec.replicas = replicas

    def placement(self, value: object, path: str, spec: pb.ServiceSpec) -> None:
        """Reads the placement's fields into spec.placement, which stays unset if all are defaults."""
        if not isinstance(value, dict):
            self.fail(
                path,
                "must be a mapping with constraints, max_replicas_per_node, strategy and/or rebalance, "
                f"got {got(value)}",
            )
            return
        self.known(value, path, "placement")
        placement = pb.Placement()
        placement.CopyFrom(_DEFAULT_PLACEMENT)
        if "constraints" in value:
            placement.constraints.extend(self.constraints(value["constraints"], key_path(path, "constraints")))
        if "max_replicas_per_node" in value:
            where = key_path(path, "max_replicas_per_node")
            cap = self.uint32(value["max_replicas_per_node"], where, validation.max_replicas_per_node_message)
            if cap is not None and self.passes(validation.max_replicas_per_node_issues(cap, where)):
                placement.max_replicas_per_node = cap
        if "strategy" in value:
            where = key_path(path, "strategy")
            strategy = self.choice(value["strategy"], where, schema.STRATEGY, validation.strategy_message)
            if strategy is not None:
                placement.strategy = strategy
        if "rebalance" in value:
            where = key_path(path, "rebalance")
            rebalance = self.boolean(value["rebalance"], where)
            if rebalance is not None and self.passes(validation.rebalance_issues(spec.mode, rebalance, where)):
                placement.rebalance = rebalance
        if placement != _DEFAULT_PLACEMENT:
            spec.placement.CopyFrom(placement)

    def constraints(self, value: object, path: str) -> list[str]:
        """Reads the list of constraint strings as written."""
        if not isinstance(value, list):
            self.fail(path, f"must be a list of constraints like [{_CONSTRAINT_EXAMPLE}], got {got(value)}")
            return []
        checks = validation.Constraints()
        constraints = []
        for i, item in enumerate(value):
            where = index_path(path, i)
            if isinstance(item, str):
                if self.text(item, where) and self.passes(checks.check(item, i, where)):
                    constraints.append(item)
                continue
            message = f"must be a string like {_CONSTRAINT_EXAMPLE}, got {got_string(item)}"
            if isinstance(item, dict):
                # `- node.labels.zone: a` is valid YAML, but a mapping rather than a comparison.
                message += '; compare with == or != rather than ":"'
            self.fail(where, message)
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
        self.known(value, path, "on_disconnect")
        where = key_path(path, "stop_after")
        if "stop_after" not in value:
            # Another key has just been reported, most likely a misspelt stop_after; once is enough.
            if not value:
                self.fail(where, f"is required; give a duration like 30s, or write on_disconnect: {_KEEP}")
            return
        # An explicit 0s is refused: the proto reads a zero deadline as "keep", the opposite of what was asked.
        nanos = self.duration(value["stop_after"], where, schema.STOP_AFTER)
        if nanos is not None:
            on_disconnect.stop_after.FromNanoseconds(nanos)

    # --- Resources ----------------------------------------------------------------------------------------

    def resources(self, value: object, path: str, resources: pb.Resources) -> None:
        """Reads resource limits and reservations; an explicit 0 is refused since the proto reads it as "not set"."""
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping with limits and/or reservations, got {got(value)}")
            return
        self.known(value, path, "resources")
        for section in schema.children("resources"):
            if section not in value:
                continue
            where = key_path(path, section)
            amounts = value[section]
            if not isinstance(amounts, dict):
                self.fail(where, f"must be a mapping with cpus and/or memory, got {got(amounts)}")
                continue
            self.known(amounts, where, f"resources.{section}")
            is_limit = section == "limits"
            if "cpus" in amounts and (cpus := self.cpus(amounts["cpus"], key_path(where, "cpus"))):
                if is_limit:
                    resources.cpu_limit = cpus
                else:
                    resources.cpu_reservation = cpus
            if "memory" in amounts and (memory := self.memory(amounts["memory"], key_path(where, "memory"), is_limit)):
                if is_limit:
                    resources.memory_limit_bytes = memory
                else:
                    resources.memory_reservation_bytes = memory
        self.passes(validation.reservation_issues(resources, path))

    def cpus(self, value: object, path: str) -> float | None:
        """Reads a CPU amount; judged before it becomes a float, which a huge integer could not."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, validation.cpus_message(got_number(value)))
            return None
        if not validation.cpus_ok(value):
            # Floats are shown as the proto's checks show them; integers as written, however long.
            shown = format_cpus(value) if isinstance(value, float) else describe(value)
            self.fail(path, validation.cpus_message(shown))
            return None
        return float(value)

    def memory(self, value: object, path: str, is_limit: bool) -> int | None:
        """Reads a byte size for a memory limit or reservation."""
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str):
            try:
                size = parse_bytes(value)
            except ValueError as exc:
                self.fail(path, str(exc))
                return None
        else:
            self.fail(path, f"must be a size like 512MiB or 2GiB, got {got(value)}")
            return None
        if size > MAX_BYTES:
            self.fail(path, f"is too large, got {describe(value)}; the maximum is {MAX_BYTES} bytes")
            return None
        check = validation.memory_limit_issues if is_limit else validation.memory_reservation_issues
        return size if self.passes(check(size, path)) else None

    # --- Restart --------------------------------------------------------------------------------------------

    def restart(self, value: object, path: str, spec: pb.ServiceSpec) -> None:
        """Reads the restart policy over its defaults; max_delay stays unset unless given."""
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping like {{condition: on-failure, delay: 5s}}, got {got(value)}")
            return
        self.known(value, path, "restart")
        restart = spec.restart
        delay_ok = True
        if "condition" in value:
            where = key_path(path, "condition")
            condition = self.choice(value["condition"], where, schema.RESTART_CONDITION, validation.condition_message)
            if condition is not None and self.passes(validation.job_condition_issues(spec.mode, condition, where)):
                restart.condition = condition
        if "delay" in value:
            nanos = self.duration(value["delay"], key_path(path, "delay"), schema.RESTART_DELAY)
            delay_ok = nanos is not None
            if nanos is not None:
                restart.delay.FromNanoseconds(nanos)
        if "max_attempts" in value:
            where = key_path(path, "max_attempts")
            attempts = self.uint32(value["max_attempts"], where, validation.max_attempts_message)
            if attempts is not None:
                restart.max_attempts = attempts
        if "window" in value:
            nanos = self.duration(value["window"], key_path(path, "window"), schema.RESTART_WINDOW)
            if nanos is not None:
                restart.window.FromNanoseconds(nanos)
        if "max_delay" in value:
            nanos = self.duration(value["max_delay"], key_path(path, "max_delay"), schema.RESTART_MAX_DELAY)
            if nanos is not None:
                restart.max_delay.FromNanoseconds(nanos)
                # Against a refused delay there is nothing to compare; that mistake is reported already.
                if delay_ok and not self.passes(validation.max_delay_issues(restart, path)):
                    restart.ClearField("max_delay")

    # --- Health -----------------------------------------------------------------------------------------------

    def healthcheck(self, value: object, path: str, check: pb.HealthCheck) -> None:
        """Reads a healthcheck as Compose writes it, with Dockyard's http and tcp probes; set even when empty."""
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping like {_HEALTH_EXAMPLE}, got {got(value)}")
            return
        self.issues.extend(unknown_fields(value, path, _HEALTH_FIELDS))
        check.SetInParent()
        if "test" in value:
            check.test.extend(self.health_test(value["test"], key_path(path, "test")))
        if _DISABLE in value:
            where = key_path(path, _DISABLE)
            disable = self.boolean(value[_DISABLE], where)
            if disable and "test" in value:
                self.fail(where, 'cannot be combined with test; disable: true means test: ["NONE"], so keep one')
            elif disable:
                check.test.append("NONE")
        if "http" in value:
            where = key_path(path, "http")
            probe = self.probe(value["http"], where, "healthcheck.http", "{port: 8080, path: /healthz}")
            if probe is not None:
                self.probe_port(probe, where, schema.HEALTH_HTTP_PORT, check.http)
                if "path" in probe:
                    self.http_path(probe["path"], key_path(where, "path"), check.http)
                if "status" in probe:
                    status = self.ranged(probe["status"], key_path(where, "status"), schema.HEALTH_HTTP_STATUS)
                    if status is not None:
                        check.http.status = status
        if "tcp" in value:
            where = key_path(path, "tcp")
            probe = self.probe(value["tcp"], where, "healthcheck.tcp", "{port: 5432}")
            if probe is not None:
                self.probe_port(probe, where, schema.HEALTH_TCP_PORT, check.tcp)
        # Judged on what was written, so a refused test still counts as the probe it was meant to be.
        given = [name for name in ("test", "http", "tcp") if name in value or (name == "test" and check.test)]
        self.passes(validation.health_probe_issues(given, path))
        for row in _TIMINGS:
            self.timing(value, path, row, check)
        if "retries" in value:
            retries = self.ranged(value["retries"], key_path(path, "retries"), schema.HEALTH_RETRIES)
            if retries is not None:
                check.retries = retries
        for row in _START_TIMINGS:
            self.timing(value, path, row, check)

    def health_test(self, value: object, path: str) -> list[str]:
        """Reads a test as Compose does: a list whose first word says how to run it, or one shell command line."""
        if isinstance(value, str):
            if not value:
                self.fail(path, 'must not be empty; give a command line, or write ["NONE"] to turn the check off')
                return []
            # The command line's own problems are reported on test, where it was written.
            if not (self.text(value, path) and self.passes(validation.argument_issues(value, path))):
                return []
            words = ["CMD-SHELL", value]
        elif isinstance(value, list):
            words = value
            if not words:
                self.fail(
                    path,
                    'must not be empty; leave test out to use the image\'s own check, or write ["NONE"] to turn it off',
                )
                return []
        else:
            self.fail(path, f'must be a list like ["CMD", "pg_isready"] or a command line string, got {got(value)}')
            return []
        test = []
        for i, word in enumerate(words):
            where = index_path(path, i)
            if not isinstance(word, str):
                self.fail(where, f"must be a string, got {got_string(word)}")
                return []
            if not self.text(word, where):
                return []
            test.append(word)
        # Checked whole, since the first word decides what may follow.
        return test if self.passes(validation.health_test_issues(test, path)) else []

    def probe(self, value: object, path: str, section: str, example: str) -> Mapping[object, object] | None:
        """Returns the mapping of an http or tcp probe, recording what is wrong with it otherwise."""
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping like {example}, got {got(value)}")
            return None
        self.known(value, path, section)
        return value

    def probe_port(self, probe: Mapping[object, object], path: str, field: Ranged[int], target: _Probe) -> None:
        """Reads the required port of a probe; the probe is set even when the port is refused."""
        target.SetInParent()
        where = key_path(path, "port")
        if "port" not in probe:
            self.fail(where, "is required; give the port the container listens on")
            return
        port = self.ranged(probe["port"], where, field)
        if port is not None:
            target.port = port

    def http_path(self, value: object, path: str, http: pb.HttpProbe) -> None:
        """Reads the path an HTTP probe gets."""
        if not isinstance(value, str):
            self.fail(path, f'must be a string like "/healthz", got {got_string(value)}')
        elif self.text(value, path) and self.passes(validation.http_path_issues(value, path)):
            http.path = value

    def timing(self, value: Mapping[object, object], path: str, field: Ranged[int], check: pb.HealthCheck) -> None:
        """Reads one of the health check's durations, which stays unset (the image's own) unless given."""
        if field.name not in value:
            return
        nanos = self.duration(value[field.name], key_path(path, field.name), field)
        if nanos is not None:
            duration: Duration = getattr(check, field.name)
            duration.FromNanoseconds(nanos)

    # --- Rollouts ----------------------------------------------------------------------------------------------

    def update_config(self, value: object, path: str, block: str, spec: pb.ServiceSpec) -> None:
        """Reads update or rollback with every key explicit; an update of defaults only stays unset."""
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping like {{parallelism: 2, order: start-first}}, got {got(value)}")
            return
        self.known(value, path, block)
        rows = validation.update_rows(block)
        config = schema.config_defaults(block)
        defaults = pb.UpdateConfig()
        defaults.CopyFrom(config)
        if "parallelism" in value:
            parallelism = self.ranged(value["parallelism"], key_path(path, "parallelism"), rows["parallelism"])
            if parallelism is not None:
                config.parallelism = parallelism
        self.config_duration(value, path, rows["delay"], config.delay)
        if "order" in value:
            order = self.choice(
                value["order"], key_path(path, "order"), rows["order"], self.choice_wording(rows["order"])
            )
            if order is not None:
                config.order = order
        self.config_duration(value, path, rows["monitor"], config.monitor)
        if "max_failure_ratio" in value:
            ratio = self.ratio(value["max_failure_ratio"], key_path(path, "max_failure_ratio"))
            if ratio is not None:
                config.max_failure_ratio = ratio
        if "failure_action" in value:
            where = key_path(path, "failure_action")
            action_value = value["failure_action"]
            if block == "rollback" and action_value == "rollback":
                self.fail(where, validation.ROLLBACK_ROLLBACK_MESSAGE)
            else:
                field = rows["failure_action"]
                action = self.choice(action_value, where, field, self.choice_wording(field))
                if action is not None:
                    config.failure_action = action
        # An update of defaults only is the same as none, and is stored as none; a rollback block is
        # kept even then, since without one a rollback runs as update says.
        if block == "rollback" or config != defaults:
            getattr(spec, block).CopyFrom(config)

    def config_duration(self, value: Mapping[object, object], path: str, field: Field[int], target: Duration) -> None:
        """Reads the delay or monitor of an update or rollback block into `target`."""
        if field.name in value and isinstance(field, Bounded):
            nanos = self.duration(value[field.name], key_path(path, field.name), field)
            if nanos is not None:
                target.FromNanoseconds(nanos)

    def ratio(self, value: object, path: str) -> float | None:
        """Reads a failure ratio, a number from 0 to 1."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(path, validation.ratio_message(got_number(value)))
            return None
        field = schema.UPDATE_MAX_FAILURE_RATIO
        if not field.minimum <= value <= field.maximum:
            self.fail(path, validation.ratio_message(describe(value)))
            return None
        return float(value)

    # --- Dependencies ------------------------------------------------------------------------------------------

    def depends_on(
        self, value: object, path: str, dependent: str, depends_on: MutableMapping[str, pb.Dependency]
    ) -> None:
        """Reads Compose's short form (a list of names: service_started) or its long form (name -> condition)."""
        started = schema.DEPENDS_ON_CONDITION.default
        if isinstance(value, list):
            first_index: dict[str, int] = {}
            for i, item in enumerate(value):
                where = index_path(path, i)
                if not isinstance(item, str):
                    self.fail(where, f"must be a service name, got {got_string(item)}")
                elif item in first_index:
                    self.fail(where, f"{quote(item)} is already listed as depends_on[{first_index[item]}]; remove one")
                elif self.text(item, where) and self.passes(validation.dependency_issues(item, dependent, where)):
                    first_index[item] = i
                    depends_on[stacks.scoped(self.stack, item)].condition = started
            return
        if not isinstance(value, dict):
            self.fail(
                path, f"must be a list of service names or a mapping like {_DEPENDS_ON_EXAMPLE}, got {got(value)}"
            )
            return
        for name, entry in value.items():
            if not isinstance(name, str):
                self.fail(path, f"service name {describe(name)} must be a string; put it in quotes")
                continue
            where = key_path(path, name)
            name_ok = self.text(name, where) and self.passes(validation.dependency_issues(name, dependent, where))
            # Read even under a refused name, so that every mistake of the entry is reported at once.
            condition = self.dependency(entry, where)
            if name_ok and condition is not None:
                depends_on[stacks.scoped(self.stack, name)].condition = condition

    def dependency(self, value: object, path: str) -> pb.Dependency.Condition.ValueType | None:
        """Reads one dependency of the long form; returns its condition, or None when it is refused."""
        if not isinstance(value, dict):
            # Leaving it out would drop the dependency, so got()'s advice for null does not fit here.
            shown = "null; write {} to wait for it to start" if value is None else got(value)
            self.fail(path, f"must be a mapping like {{condition: service_healthy}}, got {shown}")
            return None
        ok = True
        if _RESTART in value:
            ok = False
            self.fail(
                key_path(path, _RESTART),
                "is not supported: Dockyard does not restart a service when one it depends on restarts; remove it",
            )
        others = {key: item for key, item in value.items() if key != _RESTART}
        before = len(self.issues)
        self.issues.extend(unknown_fields(others, path, _DEPENDENCY_FIELDS))
        ok = ok and len(self.issues) == before
        if _REQUIRED in value and value[_REQUIRED] is not True:
            ok = False
            where = key_path(path, _REQUIRED)
            if value[_REQUIRED] is False:
                self.fail(
                    where,
                    "Dockyard always waits for every dependency, so required: false is not supported; "
                    "remove the dependency, or remove required",
                )
            else:
                self.fail(where, f"must be true (the default), got {got(value[_REQUIRED])}")
        condition = schema.DEPENDS_ON_CONDITION.default
        if "condition" in value:
            field = schema.DEPENDS_ON_CONDITION
            chosen = self.choice(value["condition"], key_path(path, "condition"), field, self.choice_wording(field))
            ok = ok and chosen is not None
            condition = chosen if chosen is not None else condition
        return condition if ok else None

    # --- Values ---------------------------------------------------------------------------------------------

    def boolean(self, value: object, path: str) -> bool | None:
        """Returns `value` if it is true or false; records the problem otherwise."""
        if isinstance(value, bool):
            return value
        self.fail(path, validation.boolean_message(got(value)))
        return None

    def ranged(self, value: object, path: str, field: Field[int]) -> int | None:
        """Reads an integer and checks it against its field's range; None when refused."""
        if not isinstance(field, Ranged):
            raise TypeError(f"{field.path} has no range")
        number = self.uint32(value, path, lambda shown: validation.ranged_message(field, shown))
        if number is None or not self.passes(validation.ranged_issues(field, number, path)):
            return None
        return number

    @staticmethod
    def choice_wording(field: Field[Any]) -> Callable[[str], str]:
        """The wording for a value that is none of `field`'s choices."""
        return lambda shown: validation.choice_message(field, shown)

    def uint32(self, value: object, path: str, message: Callable[[str], str]) -> int | None:
        """Returns `value` if it is an integer a proto uint32 holds; records `message` otherwise."""
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(path, message(got_number(value)))
            return None
        if not 0 <= value <= MAX_UINT32:
            self.fail(path, message(describe(value)))
            return None
        return value

    def choice(self, value: object, path: str, field: Field[Number], message: Callable[[str], str]) -> Number | None:
        """Returns the value a choice names, or records `message` with a guess at the name meant."""
        if isinstance(value, str) and value in field.choices:
            return field.choices[value]
        text = message(got(value))
        if isinstance(value, str) and (guess := closest(value, list(field.choices))):
            text += f"; did you mean {quote(guess)}?"
        self.fail(path, text)
        return None

    def duration(self, value: object, path: str, field: Bounded[int]) -> int | None:
        """Reads a duration in nanoseconds and checks it against its field; None when refused."""
        try:
            if isinstance(value, str):
                nanos = parse_duration_nanos(value)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                nanos = seconds_to_nanos(value)
            else:
                raise ValueError(f"{DURATION_SHAPE}, got {got(value)}")
        except ValueError as exc:
            self.fail(path, str(exc))
            return None
        return nanos if self.passes(validation.duration_issues(field, nanos, path)) else None
