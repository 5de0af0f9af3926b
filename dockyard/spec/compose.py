"""Reading Compose files into what our own YAML reads into: services, their stack, networks, volumes, secrets, configs.

A Compose file is read as `docker stack deploy` reads it. The steps:

1. parse the YAML (dockyard.spec.loading: anchors and merge keys work, duplicate keys are refused);
2. interpolate every value (dockyard.spec.interpolate: `${VAR:-default}`, the `.env` beside the file,
   the process environment winning);
3. check every key against the Compose keys Dockyard supports, collecting each unsupported one with its
   path (all of them, never only the first): an error, or warnings with `ignore_unsupported`;
4. translate each service into our own format and read it with our reader (dockyard.spec.reader), so
   every value is checked and converted in one place; the problems it finds are reported on the
   Compose file's own paths (`services.web.deploy.replicas`, not our `services.web.replicas`);
5. give every name its cluster-wide form (dockyard.spec.stacks): `<stack>_<name>` for the stack's
   services, networks, volumes, secrets and configs; external ones (and those with a `name:`) as named.

The stack is `--stack`, else the top-level `name:`, else the folder's name normalised as Compose
normalises a project name. Rules where Compose leaves a choice, or where Dockyard differs:

- a port without a published port gets one Docker picks on each node that runs a task (host_port 0);
  ports are published on the nodes that run a task (Compose's `mode: host`); `mode: ingress`, a host
  address (`127.0.0.1:8080:80`, `host_ip`) and a host-port range for one container port are unsupported
  (ignored, such a port is not published at all, never published more widely than asked);
- `restart:` maps to the restart policy (no: none, always and unless-stopped: any, on-failure[:N]:
  on-failure with N attempts); `deploy.restart_policy` wins over it, as in `docker stack deploy`;
- `labels` and `deploy.labels` both become the service's labels (deploy's win on the same key);
- memory sizes are Docker's (`1g`, `512mb` and `1GB` are all binary), CPUs may be quoted (`"0.5"`);
- a bare `KEY` in `environment` takes its value from the same variables as interpolation (the process
  environment, then `.env`), and is left out when there is none;
- `expose`, a port's `name` and `app_protocol`, a network's `attachable`, a mount's `consistency` and
  `x-` extension fields change nothing here and are accepted;
- named volumes, networks, secrets and configs a service uses must be declared at the top level, as in
  Compose; the network `default` need not be, and is `<stack>_default`.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from dockyard.constraints import ConstraintError, parse_constraint
from dockyard.spec import reader, stacks, validation
from dockyard.spec.deployment import Deployment
from dockyard.spec.interpolate import interpolate, parse_dotenv, project_variables
from dockyard.spec.issues import (
    Issue,
    SpecError,
    closest,
    describe,
    got,
    index_path,
    key_path,
    quote,
    service_path,
)
from dockyard.spec.loading import load_deployment_file, parse_yaml, read_text
from dockyard.spec.units import byte_size
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

FORMAT_AUTO: Final = "auto"
FORMAT_COMPOSE: Final = "compose"
FORMAT_DOCKYARD: Final = "dockyard"
FORMATS: Final = (FORMAT_AUTO, FORMAT_COMPOSE, FORMAT_DOCKYARD)

# The names Compose looks for by default; a file with one of these names is read as Compose.
COMPOSE_FILE_NAMES: Final = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
# Override files people keep beside them: compose.prod.yaml, docker-compose.override.yml.
_COMPOSE_FILE_PATTERN = re.compile(r"(?:docker-)?compose\.[^/]+\.ya?ml\Z")

# The largest secret or config a Compose file may hold; the spec's limit when it has one.
_FILE_LIMIT_FALLBACK = 500 * 1024

_UNSUPPORTED_ADVICE = "remove it, or pass --ignore-unsupported to ignore it"

# --- The Compose keys: what each level holds, and what Dockyard does with it --------------------------------

# Every key of a Compose service (the Compose specification's schema), so that a misspelt one is told apart
# from one Dockyard does not support.
_SERVICE_KEYS = frozenset(
    (
        "annotations",
        "attach",
        "blkio_config",
        "build",
        "cap_add",
        "cap_drop",
        "cgroup",
        "cgroup_parent",
        "command",
        "configs",
        "container_name",
        "cpu_count",
        "cpu_percent",
        "cpu_period",
        "cpu_quota",
        "cpu_rt_period",
        "cpu_rt_runtime",
        "cpu_shares",
        "cpus",
        "cpuset",
        "credential_spec",
        "depends_on",
        "deploy",
        "develop",
        "device_cgroup_rules",
        "devices",
        "dns",
        "dns_opt",
        "dns_search",
        "domainname",
        "entrypoint",
        "env_file",
        "environment",
        "expose",
        "extends",
        "external_links",
        "extra_hosts",
        "gpus",
        "group_add",
        "healthcheck",
        "hostname",
        "image",
        "init",
        "ipc",
        "isolation",
        "label_file",
        "labels",
        "links",
        "logging",
        "mac_address",
        "mem_limit",
        "mem_reservation",
        "mem_swappiness",
        "memswap_limit",
        "models",
        "network_mode",
        "networks",
        "oom_kill_disable",
        "oom_score_adj",
        "pid",
        "pids_limit",
        "platform",
        "ports",
        "post_start",
        "pre_stop",
        "privileged",
        "profiles",
        "provider",
        "pull_policy",
        "pull_refresh_after",
        "read_only",
        "restart",
        "runtime",
        "scale",
        "secrets",
        "security_opt",
        "shm_size",
        "stdin_open",
        "stop_grace_period",
        "stop_signal",
        "storage_opt",
        "sysctls",
        "tmpfs",
        "tty",
        "ulimits",
        "use_api_socket",
        "user",
        "userns_mode",
        "uts",
        "volumes",
        "volumes_from",
        "working_dir",
    )
)
_SERVICE_SUPPORTED = (
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "labels",
    "healthcheck",
    "restart",
    "stop_grace_period",
    "depends_on",
    "volumes",
    "tmpfs",
    "networks",
    "secrets",
    "configs",
    "hostname",
    "deploy",
)
# Accepted and without effect: every port of a container is reachable on its networks anyway.
_SERVICE_IGNORED = ("expose",)
# Why some common keys are unsupported, and what to do instead.
_SERVICE_HINTS = {
    "build": "build the image, then `dockyard image push IMAGE` or push it to a registry, and name it in image",
    "container_name": "containers are named by Dockyard; the service is reached by its name in the stack",
    "links": "services reach each other by name on the stack's networks",
    "network_mode": "use networks",
    "cpus": "use deploy.resources.limits.cpus",
    "mem_limit": "use deploy.resources.limits.memory",
    "mem_reservation": "use deploy.resources.reservations.memory",
    "scale": "use deploy.replicas",
    "profiles": "put the services of each profile in a file of their own",
    "extends": "copy the settings, or share them with a YAML anchor in an x- field",
}
_TOP_KEYS = ("services", "version", "name", "networks", "volumes", "secrets", "configs")
_TOP_COMPOSE_KEYS = frozenset((*_TOP_KEYS, "include", "models"))
_DEPLOY_KEYS = {
    "replicas",
    "mode",
    "placement",
    "resources",
    "update_config",
    "rollback_config",
    "restart_policy",
    "labels",
    "endpoint_mode",
}
_DEPLOY_SUPPORTED = _DEPLOY_KEYS
_PLACEMENT_KEYS = {"constraints", "preferences", "max_replicas_per_node"}
_PLACEMENT_SUPPORTED = ("constraints", "max_replicas_per_node")
_RESOURCE_KEYS = {
    "limits": {"cpus", "memory", "pids"},
    "reservations": {"cpus", "memory", "generic_resources", "devices"},
}
_RESOURCE_SUPPORTED = ("cpus", "memory")
_UPDATE_KEYS = ("parallelism", "delay", "failure_action", "monitor", "max_failure_ratio", "order")
_RESTART_POLICY_KEYS = ("condition", "delay", "max_attempts", "window")
_HEALTH_KEYS = ("test", "interval", "timeout", "retries", "start_period", "start_interval", "disable")
_PORT_KEYS = {"target", "published", "protocol", "mode", "host_ip", "name", "app_protocol"}
_MOUNT_KEYS = {"type", "source", "target", "read_only", "bind", "volume", "tmpfs", "image", "consistency"}
_MOUNT_TYPES = ("volume", "bind", "tmpfs")
_BIND_KEYS = {"propagation", "create_host_path", "selinux"}
_VOLUME_OPTION_KEYS = {"nocopy", "subpath"}
_TMPFS_KEYS = {"size", "mode"}
_SERVICE_NETWORK_KEYS = {
    "aliases",
    "ipv4_address",
    "ipv6_address",
    "link_local_ips",
    "mac_address",
    "driver_opts",
    "priority",
    "gw_priority",
    "interface_name",
}
_FILE_REF_KEYS = ("source", "target", "uid", "gid", "mode")
_DEPENDENCY_KEYS = {"condition", "required", "restart"}
_TOP_NETWORK_KEYS = {
    "name",
    "external",
    "labels",
    "internal",
    "driver",
    "driver_opts",
    "attachable",
    "ipam",
    "enable_ipv6",
    "enable_ipv4",
}
_TOP_VOLUME_KEYS = {"name", "external", "labels", "driver", "driver_opts"}
_TOP_SECRET_KEYS = {"name", "external", "labels", "file", "environment", "driver", "driver_opts", "template_driver"}
_TOP_CONFIG_KEYS = {"name", "external", "labels", "file", "environment", "content", "template_driver"}
_NETWORK_DRIVERS = ("overlay", "bridge")

# Compose's deploy.mode -> our mode.
_MODES = {"replicated": "replicated", "global": "global", "replicated-job": "job"}
# Compose's restart -> our restart condition.
_RESTARTS = {"no": "none", "always": "any", "unless-stopped": "any", "on-failure": "on-failure"}
_RESTART_SHAPE = "must be no, always, on-failure, on-failure:N or unless-stopped"
# Constraints Swarm understands on facts Dockyard does not record.
_UNKNOWN_FACTS = re.compile(r"\s*(node\.role|node\.platform\.\w+|node\.plugin\.\w+)\b")
# Docker's size syntax (go-units RAMInBytes): every unit is binary, with or without "b" or "ib".
_DOCKER_SIZE = re.compile(r"\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[kKmMgGtT])?[iI]?[bB]?\s*\Z")
_NUMBER = re.compile(r"\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)\s*\Z")
_PORT_RANGE = re.compile(r"(?P<first>\d+)-(?P<last>\d+)\Z")
# More ports than this from one range is surely a mistake, and would make a huge spec.
_MAX_RANGE = 1000


@dataclass(frozen=True)
class ComposeFile:
    """What a Compose file asks an apply for, and the unsupported keys that were ignored (as warning lines)."""

    deployment: Deployment
    warnings: list[str]
    # Why the file was read as Compose when its format was detected ("its name is compose.yaml"); "" otherwise.
    reason: str = ""


def is_compose_name(path: str | os.PathLike[str]) -> bool:
    """Whether a file's name is one Compose looks for by default (or an override file beside it)."""
    name = os.path.basename(os.fspath(path))
    return name in COMPOSE_FILE_NAMES or bool(_COMPOSE_FILE_PATTERN.match(name))


def detect_format(data: object, path: str | os.PathLike[str]) -> tuple[str, str]:
    """Tells whether a parsed file is Compose or our own format, and why, as ("compose"|"dockyard", reason).

    Both formats have a top-level `services:` mapping, so that alone decides nothing. A file is Compose
    when its name is one Compose looks for (compose.yaml, docker-compose.yml, compose.*.yaml), when it
    has a top-level `version:` or `name:` (ours has neither), or when a service uses a key of Compose's
    that ours does not have (environment, deploy, env_file, build, ...) or writes restart as a word
    (ours is a mapping). Anything else is ours. `--format` overrides this.
    """
    if is_compose_name(path):
        return FORMAT_COMPOSE, f"its name is {os.path.basename(os.fspath(path))}"
    if not isinstance(data, dict):
        return FORMAT_DOCKYARD, "it has no Compose keys"
    for key in ("version", "name"):
        if key in data:
            return FORMAT_COMPOSE, f'it has a top-level "{key}"'
    services = data.get("services")
    ours = set(reader.SERVICE_FIELDS)
    if isinstance(services, dict):
        for name, body in services.items():
            if not isinstance(body, dict):
                continue
            for key in body:
                if isinstance(key, str) and key in _SERVICE_KEYS and key not in ours:
                    return FORMAT_COMPOSE, f"{key_path(service_path(str(name)), key)} is a Compose key"
            if isinstance(body.get("restart"), str):
                return FORMAT_COMPOSE, f"{key_path(service_path(str(name)), 'restart')} is written as Compose writes it"
    return FORMAT_DOCKYARD, "it has no Compose keys"


def stack_name(data: object, directory: str, given: str = "") -> tuple[str, list[Issue]]:
    """The stack of a Compose file: `given` (--stack), else its top-level name, else its folder's name normalised."""
    if given:
        problem = stacks.stack_problem(given)
        return (given, []) if problem is None else ("", [Issue("--stack", problem)])
    if isinstance(data, dict) and "name" in data:
        name = data["name"]
        if not isinstance(name, str) or not name:
            return "", [Issue("name", f"must be the stack's name, a non-empty string, got {got(name)}")]
        problem = stacks.stack_problem(name)
        return (name, []) if problem is None else ("", [Issue("name", problem)])
    folder = os.path.basename(os.path.abspath(directory))
    derived = stacks.normalize_stack(folder)
    if not derived:
        return "", [
            Issue(
                "name",
                f"the folder's name {describe(folder)} gives no stack name; add a top-level name: or pass --stack NAME",
            )
        ]
    # A very long folder name is cut to the longest valid stack name rather than refused.
    return derived[: stacks.MAX_STACK_BYTES].rstrip("_-"), []


def load_compose(
    text: str,
    source: str = "<compose>",
    *,
    directory: str | os.PathLike[str] = ".",
    stack: str = "",
    environ: Mapping[str, str] | None = None,
    ignore_unsupported: bool = False,
) -> ComposeFile:
    """Reads a Compose document; raises SpecError listing every problem and every unsupported key.

    Relative paths (env_file, binds, secret and config files) and `.env` are found in `directory`;
    `environ` is the process environment (os.environ when None). With `ignore_unsupported`, unsupported
    keys are left out and returned as warnings instead.
    """
    folder = os.fspath(directory)
    data = parse_yaml(text, source)
    variables = project_variables(folder, environ)
    return read_compose(
        data, source, directory=folder, stack=stack, variables=variables, ignore_unsupported=ignore_unsupported
    )


def load_compose_file(
    path: str | os.PathLike[str],
    *,
    stack: str = "",
    environ: Mapping[str, str] | None = None,
    ignore_unsupported: bool = False,
) -> ComposeFile:
    """Reads a Compose file like load_compose, relative to its folder; SpecError names a file it cannot read."""
    source = os.fspath(path)
    return load_compose(
        read_text(source),
        source,
        directory=os.path.dirname(os.path.abspath(source)),
        stack=stack,
        environ=environ,
        ignore_unsupported=ignore_unsupported,
    )


def load_any_file(
    path: str | os.PathLike[str],
    *,
    file_format: str = FORMAT_AUTO,
    stack: str = "",
    environ: Mapping[str, str] | None = None,
    ignore_unsupported: bool = False,
) -> ComposeFile:
    """Reads a spec file in either format (`file_format` auto: detect_format decides); SpecError lists every problem.

    `stack` and `ignore_unsupported` are Compose's (`--stack`, `--ignore-unsupported`); our own format
    names its stack in the file. When the format was detected, a failure says why it was read as it was.
    """
    if file_format not in FORMATS:
        raise SpecError([f"--format: must be one of {', '.join(FORMATS)}, got {describe(file_format)}"])
    source = os.fspath(path)
    reason = ""
    if file_format == FORMAT_AUTO:
        file_format, reason = detect_format(parse_yaml(read_text(source), source), source)
    if file_format == FORMAT_DOCKYARD:
        if stack:
            raise SpecError(
                [f"--stack: applies to Compose files; {source} is read as Dockyard's format ({reason or '--format'})"]
            )
        return ComposeFile(load_deployment_file(source), [])
    try:
        loaded = load_compose_file(source, stack=stack, environ=environ, ignore_unsupported=ignore_unsupported)
        return ComposeFile(loaded.deployment, loaded.warnings, reason)
    except SpecError as exc:
        if not reason:
            raise
        note = f"{source}: read as a Compose file because {reason}; --format dockyard reads it as Dockyard's own format"
        raise SpecError([*exc.errors, note]) from None


def read_compose(
    data: object,
    source: str,
    *,
    directory: str,
    stack: str = "",
    variables: Mapping[str, str],
    ignore_unsupported: bool = False,
) -> ComposeFile:
    """Reads a parsed Compose document with the given variables; raises SpecError listing every problem."""
    interpolated, issues = interpolate(data, variables)
    translator = _Translator(source, directory, variables)
    name, stack_issues = stack_name(interpolated, directory, stack)
    issues += stack_issues
    translator.stack = name
    ours = translator.document(interpolated)
    deployment: Deployment | None = None
    if ours is not None:
        specs, reader_issues = reader.read_document(ours, source)
        read = Deployment(specs)
        issues += translator.issues
        issues += [Issue(translator.compose_path(issue.path), issue.message) for issue in reader_issues]
        deployment = translator.finish(read)
        issues += _checked(deployment, translator, issues)
    else:
        issues += translator.issues
    unsupported = translator.unsupported
    errors = [str(issue) for issue in issues]
    if unsupported and not ignore_unsupported:
        errors = [
            f"{issue.path}: not supported by Dockyard{issue.message}; {_UNSUPPORTED_ADVICE}" for issue in unsupported
        ] + errors
    if errors or deployment is None:
        raise SpecError(errors or [f"{source}: cannot be read"])
    warnings = [f"{issue.path}: not supported by Dockyard{issue.message}; ignored" for issue in unsupported]
    return ComposeFile(deployment, warnings)


# --- The translation -----------------------------------------------------------------------------------------


def _checked(deployment: Deployment, translator: _Translator, found: list[Issue]) -> list[Issue]:
    """The spec's own validation of the finished specs, on the file's paths, leaving out what was found already.

    The reader has checked what it read; this covers what was read here (mounts, networks, secrets,
    configs, entrypoint, hostname) and the cluster-wide names with the rules the controller applies.
    """
    seen = {str(issue) for issue in found}
    issues = []
    for spec in deployment.specs:
        if not spec.name:
            continue
        for issue in validation.service_issues(spec):
            mapped = Issue(translator.compose_path(issue.path), issue.message)
            if str(mapped) not in seen:
                seen.add(str(mapped))
                issues.append(mapped)
    return issues


@dataclass
class _Declared:
    """A top-level network, volume, secret or config: its cluster-wide name and whether the file creates it."""

    name: str
    external: bool
    # The labels the file gives it; a volume's are put on it by the agent that creates it.
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Service:
    """One Compose service as the file gives it: its name, body and deploy section, and where they are."""

    name: str
    body: Mapping[object, object]
    path: str
    deploy: Mapping[object, object]

    @property
    def deploy_path(self) -> str:
        """Where the deploy section is (or would be) in the file."""
        return key_path(self.path, "deploy")


class _Translator:
    """Checks a Compose document's keys and builds the equivalent document of our own format."""

    def __init__(self, source: str, directory: str, variables: Mapping[str, str]) -> None:
        self.source = source
        self.directory = directory
        self.variables = variables
        self.stack = ""
        self.issues: list[Issue] = []
        self.unsupported: list[Issue] = []
        # Our document's paths -> the Compose file's, so that the reader's problems are told where they were written.
        self.paths: dict[str, str] = {}
        # The service being translated, and each service's cluster-wide path -> its path in the file.
        self.current = ""
        self.renamed: dict[str, str] = {}
        self.networks: dict[str, _Declared] = {}
        self.volumes: dict[str, _Declared] = {}
        self.secrets: dict[str, _Declared] = {}
        self.configs: dict[str, _Declared] = {}
        self.network_specs: list[cpb.NetworkSpec] = []
        self.volume_specs: list[cpb.VolumeSpec] = []
        self.secret_specs: list[cpb.FileSpec] = []
        self.config_specs: list[cpb.FileSpec] = []
        # Short name -> the new parts of a spec that are read here (mounts, networks, files, ...).
        self.extras: dict[str, pb.ServiceSpec] = {}
        self.uses_default_network = False

    # --- Reporting ---

    def fail(self, path: str, message: str) -> None:
        """Records a problem at `path`."""
        self.issues.append(Issue(path, message))

    def unsupported_key(self, path: str, hint: str = "") -> None:
        """Records an unsupported key (or value) at `path`, with an optional hint on what to do instead."""
        self.unsupported.append(Issue(path, f" ({hint})" if hint else ""))

    def keys(
        self,
        mapping: Mapping[object, object],
        path: str,
        known: Iterable[str],
        supported: Iterable[str],
        hints: Mapping[str, str] | None = None,
        ignored: Iterable[str] = (),
    ) -> None:
        """Sorts keys: supported and ignored ones pass, other Compose keys are unsupported, any others unknown."""
        known_set = set(known)
        supported_set = set(supported) | set(ignored)
        for key in mapping:
            name = key if isinstance(key, str) else describe(key)
            if isinstance(key, str) and key.startswith("x-"):
                continue
            if name in supported_set:
                continue
            where = key_path(path, name)
            if name in known_set:
                self.unsupported_key(where, (hints or {}).get(name, ""))
                continue
            guess = closest(name, sorted(known_set))
            advice = f"did you mean {quote(guess)}?" if guess else "remove it"
            self.fail(where, f"is not a Compose key here; {advice}")

    def mapping(self, value: object, path: str, example: str) -> dict[object, object] | None:
        """Returns `value` if it is a mapping; records the problem otherwise (null reads as empty)."""
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        self.fail(path, f"must be a mapping like {example}, got {got(value)}")
        return None

    def map_path(self, ours: str, compose: str) -> None:
        """Records that our document's `ours` was written at `compose` in the Compose file."""
        self.paths[ours] = compose

    def note(self, extras: pb.ServiceSpec, field: str, compose: str) -> None:
        """Records where the next item of one of the spec's lists read here (mounts, networks, ...) was written."""
        index = len(getattr(extras, field))
        self.map_path(index_path(key_path(service_path(self.current), field), index), compose)

    def compose_path(self, path: str) -> str:
        """The Compose file's path for a path of our document or of a spec: the longest recorded prefix, replaced."""
        for scoped, short in self.renamed.items():
            if path == scoped or path.startswith((f"{scoped}.", f"{scoped}[")):
                path = short + path[len(scoped) :]
                break
        cut = len(path)
        while cut > 0:
            prefix = path[:cut]
            if prefix in self.paths:
                return self.paths[prefix] + path[cut:]
            cut = max(path.rfind(".", 0, cut), path.rfind("[", 0, cut))
        return path

    # --- The document ---

    def document(self, data: object) -> dict[str, object] | None:
        """Checks the top level, reads the declarations, and returns our document (None: nothing to read)."""
        if data is None:
            self.fail(self.source, 'the file is empty; a Compose file needs a "services:" mapping')
            return None
        if not isinstance(data, dict):
            self.fail(self.source, f'must be a mapping with a top-level "services" key, got {describe(data)}')
            return None
        self.keys(data, "", _TOP_COMPOSE_KEYS, _TOP_KEYS)
        if "version" in data and not isinstance(data["version"], str | int | float):
            self.fail("version", f'must be a version like "3.8", got {got(data["version"])}; it is only informative')
        self.declarations(data)
        services = data.get("services")
        if "services" not in data:
            self.fail("services", 'is required; put each service under a top-level "services:" mapping')
            return None
        if not isinstance(services, dict) or not services:
            self.fail("services", f"must be a mapping from service names to services, got {got(services)}")
            return None
        ours: dict[str, object] = {}
        for name, body in services.items():
            if not isinstance(name, str):
                self.fail("services", f"service name {describe(name)} must be a string; put it in quotes")
                continue
            if name.startswith("x-"):
                continue
            ours[name] = self.service(name, body)
            self.map_path(service_path(name), service_path(name))
        if self.uses_default_network and stacks.DEFAULT_NETWORK not in self.networks:
            self.network_specs.append(cpb.NetworkSpec(name=stacks.default_network(self.stack)))
        return {"services": ours}

    def finish(self, read: Deployment) -> Deployment:
        """Puts the stack, cluster-wide names and what was read here on the specs the reader made."""
        specs = []
        for spec in read.specs:
            short = spec.name
            extras = self.extras.get(short)
            if extras is not None:
                spec.MergeFrom(extras)
            # A refused name is empty: that service is reported already and goes no further.
            if self.stack and short:
                spec.stack = self.stack
                spec.name = stacks.scoped(self.stack, short)
                self.renamed[service_path(spec.name)] = service_path(short)
                dependencies = {stacks.scoped(self.stack, key): value for key, value in spec.depends_on.items()}
                spec.ClearField("depends_on")
                for key, value in dependencies.items():
                    spec.depends_on[key].CopyFrom(value)
            specs.append(spec)
        return Deployment(
            specs=specs,
            stack=self.stack,
            networks=self.network_specs,
            volumes=self.volume_specs,
            secrets=self.secret_specs,
            configs=self.config_specs,
        )

    # --- Top-level declarations ---

    def declarations(self, data: Mapping[object, object]) -> None:
        """Reads the top-level networks, volumes, secrets and configs."""
        for section, known, table in (
            ("networks", _TOP_NETWORK_KEYS, self.networks),
            ("volumes", _TOP_VOLUME_KEYS, self.volumes),
            ("secrets", _TOP_SECRET_KEYS, self.secrets),
            ("configs", _TOP_CONFIG_KEYS, self.configs),
        ):
            if section not in data:
                continue
            entries = self.mapping(data[section], section, "{name: {...}}")
            if entries is None:
                continue
            for key, body in entries.items():
                if not isinstance(key, str):
                    self.fail(section, f"name {describe(key)} must be a string; put it in quotes")
                    continue
                if key.startswith("x-"):
                    continue
                path = key_path(section, key)
                definition = self.mapping(body, path, "{external: true}")
                if definition is None:
                    continue
                declared = self.declared(section, key, definition, path, known)
                if declared is None:
                    continue
                first = next((other for other, known in table.items() if known.name == declared.name), None)
                if first is not None:
                    self.fail(
                        path,
                        f"is named {quote(declared.name)} in the cluster, as {key_path(section, first)} is already; "
                        "give each its own name",
                    )
                    continue
                table[key] = declared
                if not declared.external:
                    declared.labels = self.create(section, declared.name, definition, path)

    def declared(
        self, section: str, key: str, definition: Mapping[object, object], path: str, known: set[str]
    ) -> _Declared | None:
        """Checks one declaration's keys and works out its cluster-wide name."""
        supported = {"name", "external", "labels"}
        if section == "networks":
            supported |= {"internal", "driver", "attachable"}
        elif section == "volumes":
            supported |= {"driver"}
        elif section == "secrets":
            supported |= {"file", "environment"}
        else:
            supported |= {"file", "environment", "content"}
        self.keys(definition, path, known, supported, ignored=("attachable",) if section == "networks" else ())
        external = definition.get("external", False)
        if isinstance(external, dict):
            # Compose's old form, external: {name: ...}.
            external_name = external.get("name")
            external = True
            if isinstance(external_name, str) and "name" not in definition:
                definition = {**definition, "name": external_name}
        if not isinstance(external, bool):
            self.fail(key_path(path, "external"), f"must be true or false, got {got(external)}")
            return None
        name = definition.get("name")
        if name is not None and not isinstance(name, str):
            self.fail(key_path(path, "name"), f"must be a string, got {got(name)}")
            return None
        # Compose uses an explicit name as it is, unscoped; an external object is found by its own name.
        cluster = name if name else (key if external else stacks.scoped(self.stack, key))
        problem = stacks.object_name_problem(cluster)
        if problem is not None:
            self.fail(key_path(path, "name") if name else path, problem)
            return None
        if section == "networks" and "driver" in definition:
            driver = definition["driver"]
            if driver not in _NETWORK_DRIVERS:
                self.unsupported_key(
                    key_path(path, "driver"), "networks are Dockyard's own across hosts; use overlay or leave it out"
                )
        if section == "volumes" and "driver" in definition and definition["driver"] != "local":
            self.unsupported_key(
                key_path(path, "driver"), "volumes are Docker local volumes; use local or leave it out"
            )
        if external:
            for other in definition:
                if other not in ("external", "name") and not str(other).startswith("x-"):
                    self.fail(
                        key_path(path, str(other)),
                        "cannot be combined with external: true, which refers to an existing one; remove it",
                    )
        return _Declared(cluster, external)

    def create(self, section: str, name: str, definition: Mapping[object, object], path: str) -> dict[str, str]:
        """Adds the object the file declares to the request's extras; returns its labels."""
        labels = self.labels(definition.get("labels"), key_path(path, "labels")) if "labels" in definition else {}
        if section == "networks":
            internal = definition.get("internal", False)
            if not isinstance(internal, bool):
                self.fail(key_path(path, "internal"), f"must be true or false, got {got(internal)}")
                internal = False
            self.network_specs.append(cpb.NetworkSpec(name=name, labels=labels, internal=internal))
        elif section == "volumes":
            self.volume_specs.append(cpb.VolumeSpec(name=name, labels=labels))
        else:
            data = self.file_data(section, definition, path)
            if data is not None:
                target = self.secret_specs if section == "secrets" else self.config_specs
                target.append(cpb.FileSpec(name=name, labels=labels, data=data))
        return labels

    def file_data(self, section: str, definition: Mapping[object, object], path: str) -> bytes | None:
        """Reads a secret's or config's data from its file, environment variable or (configs) content."""
        sources = [key for key in ("file", "environment", "content") if key in definition]
        if len(sources) != 1:
            forms = "file, environment or content" if section == "configs" else "file or environment"
            what = "one of" if not sources else "only one of"
            self.fail(path, f"needs {what} {forms} (or external: true for an existing one)")
            return None
        key = sources[0]
        value = definition[key]
        where = key_path(path, key)
        if not isinstance(value, str):
            self.fail(where, f"must be a string, got {got(value)}")
            return None
        if key == "content":
            data = value.encode()
        elif key == "environment":
            if value not in self.variables:
                self.fail(where, f"variable {value} is not set; set it in the environment or in .env")
                return None
            data = self.variables[value].encode()
        else:
            file_path = os.path.join(self.directory, os.path.expanduser(value))
            limit = _file_limit()
            try:
                with open(file_path, "rb") as file:
                    data = file.read(limit + 1)
            except OSError as exc:
                self.fail(where, f"cannot read {describe(value)}: {exc.strerror or exc}")
                return None
        if len(data) > _file_limit():
            self.fail(where, f"holds more than {_file_limit()} bytes, the most a secret or config may hold")
            return None
        return data

    def labels(self, value: object, path: str) -> dict[str, str]:
        """Reads labels given as a mapping or a list of "key=value" strings; values as Compose writes them."""
        result: dict[str, str] = {}
        for key, item, where in self.pairs(value, path, "key"):
            text = "" if item is None else item
            if validation_passes(self, validation.label_issues(key, text, where)):
                result[key] = text
        return result

    def pairs(self, value: object, path: str, word: str) -> Iterable[tuple[str, str | None, str]]:
        """The (key, value, path) of a list of "key=value" strings or of a mapping; None for a key without value."""
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    self.fail(path, f"{word} {describe(key)} must be a string; put it in quotes")
                    continue
                where = key_path(path, key)
                text = _scalar_text(item)
                if text is None and item is not None:
                    self.fail(where, f"must be a string, got {got(item)}")
                    continue
                yield key, text, where
            return
        if isinstance(value, list):
            for i, entry in enumerate(value):
                where = index_path(path, i)
                if not isinstance(entry, str):
                    self.fail(where, f'must be a "{word}=value" string, got {got(entry)}')
                    continue
                key, equals, item = entry.partition("=")
                yield key, (item if equals else None), where
            return
        if value is not None:
            self.fail(path, f'must be a mapping or a list of "{word}=value" strings, got {got(value)}')

    # --- Services ---

    def service(self, name: str, body: object) -> dict[str, object]:
        """Checks one service's keys and returns it in our format."""
        path = service_path(name)
        self.current = name
        ours: dict[str, object] = {}
        extras = pb.ServiceSpec()
        self.extras[name] = extras
        if not isinstance(body, dict):
            self.fail(path, f'must be a mapping of service keys with at least "image", got {describe(body)}')
            return ours
        self.keys(body, path, _SERVICE_KEYS, _SERVICE_SUPPORTED, _SERVICE_HINTS, _SERVICE_IGNORED)
        deploy = self.mapping(body.get("deploy"), key_path(path, "deploy"), "{replicas: 2}")
        deploy = deploy or {}
        deploy_path = key_path(path, "deploy")
        if deploy:
            self.keys(deploy, deploy_path, _DEPLOY_KEYS, _DEPLOY_SUPPORTED)
        for key in ("image", "command", "stop_grace_period"):
            if key in body:
                ours[key] = body[key]
        env = self.environment(body, path, name)
        if env:
            ours["env"] = env
        if "ports" in body:
            ours["ports"] = self.ports(body["ports"], key_path(path, "ports"), name)
        self.deploy(deploy, deploy_path, name, ours)
        service = _Service(name, body, path, deploy)
        labels = self.service_labels(service)
        if labels:
            ours["labels"] = labels
        self.restart(service, ours)
        if "healthcheck" in body:
            health = self.mapping(body["healthcheck"], key_path(path, "healthcheck"), '{test: ["CMD", "true"]}')
            if health is not None:
                self.keys(health, key_path(path, "healthcheck"), _HEALTH_KEYS, _HEALTH_KEYS)
                ours["healthcheck"] = {
                    key: _typed(value) if key == "retries" else value
                    for key, value in health.items()
                    if key in _HEALTH_KEYS
                }
        if "depends_on" in body:
            ours["depends_on"] = self.depends_on(body["depends_on"], key_path(path, "depends_on"))
        self.entrypoint_and_hostname(body, path, extras)
        self.mounts(body, path, extras)
        self.service_networks(body, path, extras)
        for section in ("secrets", "configs"):
            if section in body:
                self.file_refs(section, body[section], key_path(path, section), extras)
        return ours

    def deploy(self, deploy: Mapping[object, object], path: str, name: str, ours: dict[str, object]) -> None:
        """Translates deploy's mode, replicas, placement, resources, update_config, rollback_config, endpoint_mode."""
        self.mode_and_replicas(deploy, path, name, ours)
        if "placement" in deploy:
            placement = self.placement(deploy["placement"], key_path(path, "placement"), name)
            if placement is not None:
                ours["placement"] = placement
        if "resources" in deploy:
            resources = self.resources(deploy["resources"], key_path(path, "resources"), name)
            if resources is not None:
                ours["resources"] = resources
        for block, ours_name in (("update_config", "update"), ("rollback_config", "rollback")):
            if block in deploy:
                where = key_path(path, block)
                config = self.mapping(deploy[block], where, "{parallelism: 1}")
                if config is not None:
                    self.keys(config, where, _UPDATE_KEYS, _UPDATE_KEYS)
                    ours[ours_name] = {key: _typed(value) for key, value in config.items() if key in _UPDATE_KEYS}
                    self.map_path(key_path(service_path(name), ours_name), where)
        if "endpoint_mode" in deploy and deploy["endpoint_mode"] != "dnsrr":
            self.unsupported_key(
                key_path(path, "endpoint_mode"),
                "service names resolve to the tasks' own addresses, as endpoint_mode: dnsrr",
            )

    def environment(self, body: Mapping[object, object], path: str, name: str) -> dict[str, str]:
        """Merges env_file (in order) and environment (winning) into one mapping, recording where each came from."""
        env: dict[str, str] = {}
        base = key_path(service_path(name), "env")
        if "env_file" in body:
            for key, text, where in self.env_files(body["env_file"], key_path(path, "env_file")):
                env[key] = text
                self.map_path(key_path(base, key), where)
        if "environment" in body:
            for key, written, where in self.pairs(body["environment"], key_path(path, "environment"), "NAME"):
                # A bare NAME takes its value from the variables, and is left out without one.
                value = written if written is not None else self.variables.get(key)
                if value is not None:
                    env[key] = value
                    self.map_path(key_path(base, key), where)
        return env

    def env_files(self, value: object, path: str) -> Iterable[tuple[str, str, str]]:
        """The variables of the env_file entries, in order, each with the entry's path."""
        entries = value if isinstance(value, list) else [value]
        for i, item in enumerate(entries):
            where = index_path(path, i) if isinstance(value, list) else path
            required = True
            entry = item
            if isinstance(item, dict):
                self.keys(item, where, {"path", "required", "format"}, {"path", "required"})
                required_value = item.get("required", True)
                if not isinstance(required_value, bool):
                    self.fail(key_path(where, "required"), f"must be true or false, got {got(required_value)}")
                else:
                    required = required_value
                entry = item.get("path")
                where = key_path(where, "path")
            if not isinstance(entry, str) or not entry:
                self.fail(where, f"must be the path of a file of NAME=value lines, got {got(entry)}")
                continue
            file_path = os.path.join(self.directory, os.path.expanduser(entry))
            if not os.path.exists(file_path) and not required:
                continue
            try:
                values = parse_dotenv(read_text(file_path), file_path, self.variables)
            except SpecError as exc:
                for error in exc.errors:
                    self.fail(where, error)
                continue
            for key, text in values.items():
                yield key, text, where

    def ports(self, value: object, path: str, service: str) -> list[object]:
        """Translates the ports, expanding ranges; ports Dockyard cannot publish as asked are left out."""
        if not isinstance(value, list):
            self.fail(path, f'must be a list of ports like "8080:80", got {got(value)}')
            return []
        ours: list[object] = []
        base = key_path(service_path(service), "ports")
        for i, item in enumerate(value):
            where = index_path(path, i)
            if isinstance(item, str):
                translated = self.short_port(item, where)
            elif isinstance(item, dict):
                translated = self.long_port(item, where)
            else:
                translated = [item]
            for port in translated:
                self.map_path(index_path(base, len(ours)), where)
                ours.append(port)
        return ours

    def short_port(self, text: str, path: str) -> list[object]:
        """Translates "[IP:][HOST:]CONTAINER[/PROTOCOL]", expanding "8000-8002:8000-8002" into one port each."""
        body, slash, protocol = text.strip().partition("/")
        suffix = f"/{protocol}" if slash else ""
        parts = body.rsplit(":", 2)
        if len(parts) == 3:
            self.unsupported_key(path, "binding to a host address; such a port is not published")
            return []
        host, container = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
        container_range = _PORT_RANGE.match(container)
        host_range = _PORT_RANGE.match(host)
        if container_range is None and host_range is None:
            return [text]
        if container_range is None:
            self.unsupported_key(path, "a range of host ports for one container port; such a port is not published")
            return []
        first, last = int(container_range["first"]), int(container_range["last"])
        count = last - first + 1
        if count < 1 or count > _MAX_RANGE:
            self.fail(
                path,
                f"the range must run from a lower to a higher port, at most {_MAX_RANGE} ports, got {describe(text)}",
            )
            return []
        if host_range is not None:
            host_first = int(host_range["first"])
            if int(host_range["last"]) - host_first + 1 != count:
                self.fail(path, f"the host and container ranges must have the same length, got {describe(text)}")
                return []
            return [f"{host_first + k}:{first + k}{suffix}" for k in range(count)]
        if host:
            return [text]
        return [f"{first + k}{suffix}" for k in range(count)]

    def long_port(self, item: Mapping[object, object], path: str) -> list[object]:
        """Translates a port's long form."""
        self.keys(item, path, _PORT_KEYS, {"target", "published", "protocol", "mode"}, ignored=("name", "app_protocol"))
        if "host_ip" in item:
            # Published on every address would expose more than asked; not publishing is the safe reading.
            return []
        if "mode" in item and item["mode"] != "host":
            if item["mode"] == "ingress":
                self.unsupported_key(
                    key_path(path, "mode"), "ports are published on the nodes that run a task, as mode: host"
                )
            else:
                self.fail(key_path(path, "mode"), f"must be host or ingress, got {got(item['mode'])}")
        port: dict[str, object] = {}
        for key in ("target", "published", "protocol"):
            if key in item:
                value = item[key]
                if key != "protocol" and isinstance(value, str) and value.strip().isdigit():
                    value = int(value)
                port[key] = value
        if isinstance(port.get("published"), str) and _PORT_RANGE.match(str(port["published"])):
            self.unsupported_key(
                key_path(path, "published"),
                "a range of host ports for one container port; such a port is not published",
            )
            return []
        return [port]

    def mode_and_replicas(
        self, deploy: Mapping[object, object], path: str, service: str, ours: dict[str, object]
    ) -> None:
        """Translates deploy.mode and deploy.replicas."""
        base = service_path(service)
        if "mode" in deploy:
            mode = deploy["mode"]
            where = key_path(path, "mode")
            if mode == "global-job":
                self.unsupported_key(where, "jobs run a number of replicas; use replicated-job")
            elif isinstance(mode, str) and mode in _MODES:
                ours["mode"] = _MODES[mode]
                self.map_path(key_path(base, "mode"), where)
            else:
                text = f"must be replicated, global or replicated-job, got {got(mode)}"
                if isinstance(mode, str) and (guess := closest(mode, [*_MODES, "global-job"])):
                    text += f"; did you mean {quote(guess)}?"
                self.fail(where, text)
        if "replicas" in deploy:
            ours["replicas"] = _typed(deploy["replicas"])
            self.map_path(key_path(base, "replicas"), key_path(path, "replicas"))

    def placement(self, value: object, path: str, service: str) -> dict[str, object] | None:
        """Translates deploy.placement, leaving out constraints on facts Dockyard does not record."""
        placement = self.mapping(value, path, '{constraints: ["node.labels.zone == a"]}')
        if placement is None:
            return None
        self.keys(
            placement,
            path,
            _PLACEMENT_KEYS,
            _PLACEMENT_SUPPORTED,
            {"preferences": "tasks are spread across nodes by default"},
        )
        base = key_path(service_path(service), "placement")
        self.map_path(base, path)
        ours: dict[str, object] = {}
        if "max_replicas_per_node" in placement:
            ours["max_replicas_per_node"] = _typed(placement["max_replicas_per_node"])
        if "constraints" in placement:
            constraints = placement["constraints"]
            where = key_path(path, "constraints")
            if not isinstance(constraints, list):
                ours["constraints"] = constraints
                return ours
            kept: list[object] = []
            for i, constraint in enumerate(constraints):
                if isinstance(constraint, str) and _unknown_fact(constraint):
                    self.unsupported_key(
                        index_path(where, i),
                        "Dockyard knows node.labels, engine.labels, node.hostname and node.id; "
                        "label the nodes and constrain on node.labels",
                    )
                    continue
                self.map_path(index_path(key_path(base, "constraints"), len(kept)), index_path(where, i))
                kept.append(constraint)
            ours["constraints"] = kept
        return ours

    def resources(self, value: object, path: str, service: str) -> dict[str, object] | None:
        """Translates deploy.resources: CPUs may be quoted, memory is in Docker's units."""
        resources = self.mapping(value, path, '{limits: {cpus: "0.5", memory: 512M}}')
        if resources is None:
            return None
        self.keys(resources, path, _RESOURCE_KEYS, _RESOURCE_KEYS)
        self.map_path(key_path(service_path(service), "resources"), path)
        ours: dict[str, object] = {}
        for section, known in _RESOURCE_KEYS.items():
            if section not in resources:
                continue
            where = key_path(path, section)
            amounts = self.mapping(resources[section], where, '{cpus: "0.5", memory: 512M}')
            if amounts is None:
                continue
            self.keys(amounts, where, known, _RESOURCE_SUPPORTED)
            translated: dict[str, object] = {}
            if "cpus" in amounts:
                cpus = amounts["cpus"]
                translated["cpus"] = float(cpus) if isinstance(cpus, str) and _NUMBER.match(cpus) else cpus
            if "memory" in amounts:
                translated["memory"] = _docker_size(amounts["memory"])
            if translated:
                ours[section] = translated
        return ours

    def service_labels(self, service: _Service) -> dict[str, str]:
        """Merges the container labels and deploy.labels (winning) into the service's labels."""
        labels: dict[str, str] = {}
        base = key_path(service_path(service.name), "labels")
        for source, where in (
            (service.body, key_path(service.path, "labels")),
            (service.deploy, key_path(service.deploy_path, "labels")),
        ):
            if "labels" not in source:
                continue
            for key, value, at in self.pairs(source["labels"], where, "key"):
                labels[key] = "" if value is None else value
                self.map_path(key_path(base, key), at)
        return labels

    def restart(self, service: _Service, ours: dict[str, object]) -> None:
        """Translates deploy.restart_policy, or else restart, into our restart policy."""
        base = key_path(service_path(service.name), "restart")
        body, path, deploy = service.body, service.path, service.deploy
        if "restart_policy" in deploy:
            where = key_path(service.deploy_path, "restart_policy")
            policy = self.mapping(deploy["restart_policy"], where, "{condition: on-failure}")
            if policy is not None:
                self.keys(policy, where, _RESTART_POLICY_KEYS, _RESTART_POLICY_KEYS)
                ours["restart"] = {key: _typed(value) for key, value in policy.items() if key in _RESTART_POLICY_KEYS}
                self.map_path(base, where)
            return
        if "restart" not in body:
            return
        value = body["restart"]
        where = key_path(path, "restart")
        if not isinstance(value, str):
            self.fail(where, f"{_RESTART_SHAPE}, got {got(value)}")
            return
        word, colon, count = value.partition(":")
        if word not in _RESTARTS or (colon and (word != "on-failure" or not count.isdigit())):
            text = f"{_RESTART_SHAPE}, got {describe(value)}"
            if guess := closest(word, list(_RESTARTS)):
                text += f"; did you mean {quote(guess)}?"
            self.fail(where, text)
            return
        restart: dict[str, object] = {"condition": _RESTARTS[word]}
        if colon:
            restart["max_attempts"] = int(count)
        ours["restart"] = restart
        self.map_path(base, where)
        self.map_path(key_path(base, "condition"), where)
        self.map_path(key_path(base, "max_attempts"), where)

    def depends_on(self, value: object, path: str) -> object:
        """Translates depends_on; a long entry's restart: true and required: false are unsupported."""
        if not isinstance(value, dict):
            return value
        ours: dict[object, object] = {}
        for name, entry in value.items():
            where = key_path(path, str(name))
            if not isinstance(entry, dict):
                ours[name] = entry
                continue
            self.keys(entry, where, _DEPENDENCY_KEYS, _DEPENDENCY_KEYS)
            if entry.get("restart") is True:
                self.unsupported_key(
                    key_path(where, "restart"), "a service is not restarted when one it depends on restarts"
                )
            if entry.get("required") is False:
                self.unsupported_key(key_path(where, "required"), "every dependency is waited for")
            translated = {key: item for key, item in entry.items() if key == "condition"}
            for key in ("restart", "required"):
                if key in entry and not isinstance(entry[key], bool):
                    self.fail(key_path(where, key), f"must be true or false, got {got(entry[key])}")
            ours[name] = translated
        return ours

    # --- What the reader does not read yet: entrypoint, hostname, mounts, networks, secrets, configs ---

    def entrypoint_and_hostname(self, body: Mapping[object, object], path: str, extras: pb.ServiceSpec) -> None:
        """Reads entrypoint (a list, or a string split as Compose splits it) and hostname."""
        if "entrypoint" in body:
            words = _words(body["entrypoint"])
            if words is None:
                self.fail(
                    key_path(path, "entrypoint"),
                    f"must be a list of strings or a command line, got {got(body['entrypoint'])}",
                )
            else:
                extras.entrypoint.extend(words)
        if "hostname" in body:
            hostname = body["hostname"]
            if not isinstance(hostname, str):
                self.fail(key_path(path, "hostname"), f"must be a string, got {got(hostname)}")
            else:
                extras.hostname = hostname

    def mounts(self, body: Mapping[object, object], path: str, extras: pb.ServiceSpec) -> None:
        """Reads volumes (short and long) and tmpfs into mounts."""
        if "volumes" in body:
            where = key_path(path, "volumes")
            volumes = body["volumes"]
            if not isinstance(volumes, list):
                self.fail(where, f'must be a list like ["data:/var/lib/data"], got {got(volumes)}')
            else:
                for i, item in enumerate(volumes):
                    mount = self.mount(item, index_path(where, i))
                    if mount is not None:
                        self.note(extras, "mounts", index_path(where, i))
                        extras.mounts.append(mount)
        if "tmpfs" in body:
            where = key_path(path, "tmpfs")
            value = body["tmpfs"]
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                at = index_path(where, i) if isinstance(value, list) else where
                if not isinstance(item, str):
                    self.fail(at, f'must be a path like "/run", got {got(item)}')
                    continue
                target, _, options = item.partition(":")
                mount = pb.Mount(type=pb.Mount.TYPE_TMPFS, target=target)
                for option in filter(None, options.split(",")):
                    if option.startswith("size="):
                        size = self.size(option[len("size=") :], at)
                        if size is not None:
                            mount.tmpfs_size_bytes = size
                    else:
                        self.unsupported_key(at, f"the tmpfs option {describe(option)}")
                self.note(extras, "mounts", at)
                extras.mounts.append(mount)

    def mount(self, item: object, path: str) -> pb.Mount | None:
        """Reads one entry of volumes: "SOURCE:TARGET[:ro]" or the long form."""
        if isinstance(item, str):
            return self.short_mount(item, path)
        if not isinstance(item, dict):
            self.fail(path, f'must be "SOURCE:TARGET[:ro]" or a mapping with type, source and target, got {got(item)}')
            return None
        self.keys(
            item,
            path,
            _MOUNT_KEYS,
            {"type", "source", "target", "read_only", "bind", "volume", "tmpfs"},
            ignored=("consistency",),
        )
        kind = item.get("type", "volume")
        if kind not in _MOUNT_TYPES:
            if kind in ("npipe", "cluster", "image"):
                self.unsupported_key(key_path(path, "type"), "use volume, bind or tmpfs")
            else:
                self.fail(key_path(path, "type"), f"must be volume, bind or tmpfs, got {got(kind)}")
            return None
        # A bind's source is never made on the host and a volume is mounted as Docker does by default (nocopy
        # and create_host_path are not read), so of these options only a tmpfs's size is supported.
        for key, known, supported in (
            ("bind", _BIND_KEYS, set[str]()),
            ("volume", _VOLUME_OPTION_KEYS, set[str]()),
            ("tmpfs", _TMPFS_KEYS, {"size"}),
        ):
            if key in item:
                options = self.mapping(item[key], key_path(path, key), "{}")
                if options is not None:
                    self.keys(options, key_path(path, key), known, supported)
        read_only = item.get("read_only", False)
        if not isinstance(read_only, bool):
            self.fail(key_path(path, "read_only"), f"must be true or false, got {got(read_only)}")
            read_only = False
        source = item.get("source", "")
        target = item.get("target")
        if not isinstance(source, str):
            self.fail(key_path(path, "source"), f"must be a string, got {got(source)}")
            return None
        if not isinstance(target, str) or not target:
            self.fail(key_path(path, "target"), f"is required: the path in the container, got {got(target)}")
            return None
        mount = self.mount_of(str(kind), source, target, read_only, path, key_path(path, "source"))
        if mount is not None and kind == "tmpfs" and isinstance(item.get("tmpfs"), dict) and "size" in item["tmpfs"]:
            size = self.size(item["tmpfs"]["size"], key_path(key_path(path, "tmpfs"), "size"))
            if size is not None:
                mount.tmpfs_size_bytes = size
        return mount

    def short_mount(self, item: str, path: str) -> pb.Mount | None:
        """Reads "SOURCE:TARGET[:OPTIONS]": a source that is a path is a bind, any other a declared volume."""
        parts = item.split(":")
        if len(parts) == 1:
            self.unsupported_key(path, "an anonymous volume; name it and declare it in the top-level volumes")
            return None
        if len(parts) > 3:
            self.fail(path, f'must be "SOURCE:TARGET" or "SOURCE:TARGET:ro", got {describe(item)}')
            return None
        source, target = parts[0], parts[1]
        read_only = False
        for option in filter(None, (parts[2] if len(parts) == 3 else "").split(",")):
            if option in ("ro", "rw"):
                read_only = option == "ro"
            else:
                self.unsupported_key(path, f"the mount option {describe(option)}")
        kind = "bind" if _is_path(source) else "volume"
        return self.mount_of(kind, source, target, read_only, path, path)

    def mount_of(
        self, kind: str, source: str, target: str, read_only: bool, path: str, source_path: str
    ) -> pb.Mount | None:
        """Builds a mount; a volume's source must be declared, a bind's is made absolute from the file's folder."""
        if not target.startswith("/"):
            self.fail(path, f"the target must be an absolute path in the container, got {describe(target)}")
            return None
        if kind == "tmpfs":
            return pb.Mount(type=pb.Mount.TYPE_TMPFS, target=target, read_only=read_only)
        if kind == "bind":
            if not source:
                self.fail(source_path, "is required for a bind mount: the host path")
                return None
            absolute = os.path.normpath(os.path.join(self.directory, os.path.expanduser(source)))
            return pb.Mount(type=pb.Mount.TYPE_BIND, source=absolute, target=target, read_only=read_only)
        if not source:
            self.unsupported_key(path, "an anonymous volume; name it and declare it in the top-level volumes")
            return None
        declared = self.volumes.get(source)
        if declared is None:
            self.undeclared("volumes", source, source_path)
            return None
        return pb.Mount(
            type=pb.Mount.TYPE_VOLUME,
            source=declared.name,
            target=target,
            read_only=read_only,
            volume_labels=declared.labels,
        )

    def undeclared(self, section: str, name: str, path: str) -> None:
        """Records a reference to a network, volume, secret or config the file does not declare (Compose refuses it)."""
        table = {"networks": self.networks, "volumes": self.volumes, "secrets": self.secrets, "configs": self.configs}
        guess = closest(name, sorted(table[section]))
        advice = f"did you mean {quote(guess)}? Or declare" if guess else "declare"
        self.fail(
            path,
            f"{section[:-1]} {quote(name)} is not declared in the top-level {section}; {advice} it there "
            "(with external: true for one that exists outside the file)",
        )

    def size(self, value: object, path: str) -> int | None:
        """Reads a size in Docker's units with the spec's own rule (units.byte_size: bytes up to MAX_BYTES)."""
        if isinstance(value, bool) or not isinstance(value, int | str):
            self.fail(path, f"must be a size like 64m, got {got(value)}")
            return None
        try:
            return byte_size(_docker_size(value))
        except ValueError as exc:
            self.fail(path, str(exc))
            return None

    def service_networks(self, body: Mapping[object, object], path: str, extras: pb.ServiceSpec) -> None:
        """Reads networks (a list, or a mapping whose entries may hold options) into cluster-wide names."""
        if "networks" not in body:
            declared_default = self.networks.get(stacks.DEFAULT_NETWORK)
            if declared_default is None:
                self.uses_default_network = True
            elif declared_default.name != stacks.default_network(self.stack):
                # A top-level `default:` with a name of its own (or external) is what "no networks" joins.
                extras.networks.append(declared_default.name)
            return
        where = key_path(path, "networks")
        value = body["networks"]
        names: list[tuple[str, str]] = []
        if isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    self.fail(index_path(where, i), f"must be a network name, got {got(item)}")
                else:
                    names.append((item, index_path(where, i)))
        elif isinstance(value, dict):
            for key, options in value.items():
                at = key_path(where, str(key))
                if options is not None:
                    entry = self.mapping(options, at, "{aliases: [name]}")
                    if entry:
                        self.keys(
                            entry, at, _SERVICE_NETWORK_KEYS, (), {"aliases": "the service is reached by its own name"}
                        )
                names.append((str(key), at))
        else:
            self.fail(where, f"must be a list of network names, got {got(value)}")
            return
        for name, at in names:
            declared = self.networks.get(name)
            if declared is not None:
                self.note(extras, "networks", at)
                extras.networks.append(declared.name)
            elif name == stacks.DEFAULT_NETWORK:
                self.uses_default_network = True
                self.note(extras, "networks", at)
                extras.networks.append(stacks.default_network(self.stack))
            else:
                self.undeclared("networks", name, at)

    def file_refs(self, section: str, value: object, path: str, extras: pb.ServiceSpec) -> None:
        """Reads a service's secrets or configs, short (a name) or long (source, target, uid, gid, mode)."""
        if not isinstance(value, list):
            self.fail(path, f"must be a list of {section[:-1]} names or mappings with source, got {got(value)}")
            return
        table = self.secrets if section == "secrets" else self.configs
        target_list = extras.secrets if section == "secrets" else extras.configs
        for i, item in enumerate(value):
            where = index_path(path, i)
            ref = pb.FileRef()
            if isinstance(item, str):
                source = item
                source_path = where
            elif isinstance(item, dict):
                self.keys(item, where, _FILE_REF_KEYS, _FILE_REF_KEYS)
                source_value = item.get("source")
                source_path = key_path(where, "source")
                if not isinstance(source_value, str):
                    self.fail(
                        source_path, f"is required: the name of a top-level {section[:-1]}, got {got(source_value)}"
                    )
                    continue
                source = source_value
                if "target" in item:
                    if not isinstance(item["target"], str):
                        self.fail(key_path(where, "target"), f"must be a string, got {got(item['target'])}")
                    else:
                        ref.target = item["target"]
                for key in ("uid", "gid"):
                    if key in item:
                        number = _whole(item[key], 10)
                        if number is None:
                            self.fail(key_path(where, key), f'must be a number like "1000", got {got(item[key])}')
                        else:
                            setattr(ref, key, number)
                if "mode" in item:
                    mode = _whole(item["mode"], 8)
                    if mode is None or mode > 0o777:
                        self.fail(
                            key_path(where, "mode"),
                            f"must be a file mode like 0440, at most 0777, got {got(item['mode'])}",
                        )
                    else:
                        ref.mode = mode
            else:
                self.fail(where, f"must be a {section[:-1]} name or a mapping with source, got {got(item)}")
                continue
            declared = table.get(source)
            if declared is None:
                self.undeclared(section, source, source_path)
                continue
            ref.name = declared.name
            if not ref.target:
                # As Compose: the file's own (short) name, not the cluster-wide one.
                ref.target = source if section == "secrets" else f"/{source}"
            self.note(extras, section, where)
            target_list.append(ref)


def validation_passes(translator: _Translator, found: Iterable[Issue]) -> bool:
    """Records the problems a check found; tells whether there were none."""
    before = len(translator.issues)
    translator.issues.extend(found)
    return len(translator.issues) == before


def _typed(value: object) -> object:
    """A number written as text (quoted, or by interpolation: replicas: ${N:-2}) as the number, as Compose reads it.

    Only used for fields that hold numbers or durations; a duration stays text ("10s", and "10" means seconds).
    """
    if isinstance(value, str) and _NUMBER.match(value):
        number = value.strip()
        if re.fullmatch(r"[-+]?\d+", number):
            return int(number)
        return float(number)
    return value


def _scalar_text(value: object) -> str | None:
    """A scalar as Compose writes it into an environment or label value; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


def _words(value: object) -> list[str] | None:
    """A command given as a list of strings, or one string split as Compose splits it (shell words)."""
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError:
            return None
    if isinstance(value, list) and all(isinstance(word, str) for word in value):
        return list(value)
    return None


def _unknown_fact(constraint: str) -> bool:
    """Whether a constraint names a fact Swarm has and Dockyard does not (node.role, node.platform.os, ...)."""
    try:
        parse_constraint(constraint)
    except ConstraintError:
        return bool(_UNKNOWN_FACTS.match(constraint))
    return False


def _docker_size(value: object) -> object:
    """Rewrites a size in Docker's units (all binary: 1g, 512mb, 1GB) into the spec's spelling (1GiB)."""
    if not isinstance(value, str):
        return value
    match = _DOCKER_SIZE.match(value)
    if match is None:
        return value
    unit = match["unit"]
    return f"{match['number']}{unit.upper()}iB" if unit else match["number"]


def _is_path(source: str) -> bool:
    """Whether a short volume's source is a host path (a bind) rather than a volume's name."""
    return source.startswith(("/", ".", "~"))


def _whole(value: object, base: int) -> int | None:
    """A non-negative whole number given as a number or as text in `base` (mode "0440" is octal)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        text = value.strip().removeprefix("0o") if base == 8 else value.strip()
        try:
            number = int(text, base)
        except ValueError:
            return None
        return number if number >= 0 else None
    return None


def _file_limit() -> int:
    """The most bytes a secret or config may hold: the spec's limit (schema.FILE_BYTES) when it defines one."""
    from dockyard.spec import schema

    limit = getattr(schema, "FILE_BYTES", None)
    maximum = getattr(limit, "maximum", None) if limit is not None else None
    return int(maximum) if isinstance(maximum, int) else _FILE_LIMIT_FALLBACK
