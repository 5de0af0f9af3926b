"""Compose keys read into specs (dockyard.spec.compose): each supported key, each rule, each error's path."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.spec.compose import (
    FORMAT_COMPOSE,
    FORMAT_DOCKYARD,
    ComposeFile,
    detect_format,
    load_compose,
    stack_name,
)
from dockyard.spec.issues import SpecError
from dockyard.spec.loading import parse_yaml
from dockyard.v1 import types_pb2 as pb

GIB = 1024**3
MIB = 1024**2


def read(text: str, tmp_path: Path, environ: dict[str, str] | None = None, **options: object) -> ComposeFile:
    folder = tmp_path / "My Shop!"
    folder.mkdir(exist_ok=True)
    return load_compose(text, "compose.yaml", directory=folder, environ=environ or {}, **options)  # type: ignore[arg-type]


def spec(text: str, tmp_path: Path, name: str = "web", **options: object) -> pb.ServiceSpec:
    loaded = read(text, tmp_path, **options)  # type: ignore[arg-type]
    return next(s for s in loaded.deployment.specs if s.name.endswith(f"_{name}"))


def errors(text: str, tmp_path: Path, environ: dict[str, str] | None = None, **options: object) -> list[str]:
    with pytest.raises(SpecError) as caught:
        read(text, tmp_path, environ, **options)
    return caught.value.errors


def test_stack_from_the_folder_name_top_level_name_and_option(tmp_path: Path) -> None:
    loaded = read("services: {web: {image: nginx}}", tmp_path)
    assert loaded.deployment.stack == "myshop"
    assert [s.name for s in loaded.deployment.specs] == ["myshop_web"]
    assert loaded.deployment.specs[0].stack == "myshop"
    assert read("name: shop\nservices: {web: {image: nginx}}", tmp_path).deployment.stack == "shop"
    assert read("name: shop\nservices: {web: {image: nginx}}", tmp_path, stack="other").deployment.stack == "other"
    assert errors("name: Shop\nservices: {web: {image: nginx}}", tmp_path)[0].startswith("name: stack name must be")
    assert errors("services: {web: {image: nginx}}", tmp_path, stack="A B")[0].startswith("--stack: ")


def test_stack_name_of_an_unusable_folder(tmp_path: Path) -> None:
    folder = tmp_path / "___"
    folder.mkdir()
    name, issues = stack_name({}, str(folder))
    assert name == ""
    assert "--stack" in issues[0].message


def test_image_command_entrypoint_hostname(tmp_path: Path) -> None:
    web = spec(
        """
services:
  web:
    image: nginx:1.27
    command: nginx -g "daemon off;"
    entrypoint: /docker-entrypoint.sh --verbose
    hostname: front
""",
        tmp_path,
    )
    assert web.image == "nginx:1.27"
    assert list(web.command) == ["nginx", "-g", "daemon off;"]
    assert list(web.entrypoint) == ["/docker-entrypoint.sh", "--verbose"]
    assert web.hostname == "front"
    listed = spec("services: {web: {image: nginx, entrypoint: [sh, -c], command: [echo, hi]}}", tmp_path)
    assert list(listed.entrypoint) == ["sh", "-c"]
    assert list(listed.command) == ["echo", "hi"]


def test_environment_forms_env_file_and_precedence(tmp_path: Path) -> None:
    folder = tmp_path / "My Shop!"
    folder.mkdir()
    (folder / "base.env").write_text("A=from-file\nB=from-file\n")
    web = spec(
        """
services:
  web:
    image: nginx
    env_file: [base.env, {path: missing.env, required: false}]
    environment:
      B: from-environment
      NUMBER: 8080
      FLAG: true
      FROM_PROCESS:
      NOT_SET:
""",
        tmp_path,
        environ={"FROM_PROCESS": "p"},
    )
    assert dict(web.env) == {
        "A": "from-file",
        "B": "from-environment",
        "NUMBER": "8080",
        "FLAG": "true",
        "FROM_PROCESS": "p",
    }
    listed = spec("services: {web: {image: nginx, environment: [A=1, B, C=x=y]}}", tmp_path, environ={"B": "b"})
    assert dict(listed.env) == {"A": "1", "B": "b", "C": "x=y"}


def test_missing_required_env_file_is_an_error_on_its_path(tmp_path: Path) -> None:
    found = errors("services: {web: {image: nginx, env_file: [nope.env]}}", tmp_path)
    assert len(found) == 1
    assert found[0].startswith("services.web.env_file[0]: ")
    assert "cannot read the file" in found[0]


def test_labels_and_deploy_labels_merge(tmp_path: Path) -> None:
    web = spec(
        "services: {web: {image: nginx, labels: [a=1, b=2], deploy: {labels: {b: deploy, c: '3'}}}}",
        tmp_path,
    )
    assert dict(web.labels) == {"a": "1", "b": "deploy", "c": "3"}


def test_ports_short_long_ranges_and_no_host_port(tmp_path: Path) -> None:
    web = spec(
        """
services:
  web:
    image: nginx
    ports:
      - "8080:80"
      - "53:53/udp"
      - "9000"
      - "7000-7001:8000-8001"
      - "6000-6001/udp"
      - 9999
      - {target: 443, published: "8443", protocol: tcp, mode: host, name: https}
""",
        tmp_path,
    )
    got = [(p.host_port, p.container_port, p.protocol) for p in web.ports]
    assert got == [
        (8080, 80, "tcp"),
        (53, 53, "udp"),
        (0, 9000, "tcp"),
        (7000, 8000, "tcp"),
        (7001, 8001, "tcp"),
        (0, 6000, "udp"),
        (0, 6001, "udp"),
        (0, 9999, "tcp"),
        (8443, 443, "tcp"),
    ]


def test_port_errors_name_the_compose_entry(tmp_path: Path) -> None:
    found = errors('services: {web: {image: nginx, ports: ["1-2:1-2", "8080:80", "8080:80", "70000:80"]}}', tmp_path)
    assert any(line.startswith("services.web.ports[2]") and "8080" in line for line in found), found
    assert any(line.startswith("services.web.ports[3]") for line in found), found
    assert all(not line.startswith("services.web.ports[4]") for line in found)


def test_unpublishable_ports_are_unsupported_and_left_out(tmp_path: Path) -> None:
    text = """
services:
  web:
    image: nginx
    ports: ["127.0.0.1:8080:80", "8000-8010:80", {target: 80, host_ip: 127.0.0.1}, {target: 81, mode: ingress}, "82:82"]
"""
    found = errors(text, tmp_path)
    assert [line.split(":", 1)[0] for line in found] == [
        "services.web.ports[0]",
        "services.web.ports[1]",
        "services.web.ports[2].host_ip",
        "services.web.ports[3].mode",
    ]
    loaded = read(text, tmp_path, ignore_unsupported=True)
    assert len(loaded.warnings) == 4
    assert [(p.host_port, p.container_port) for p in loaded.deployment.specs[0].ports] == [(0, 81), (82, 82)]


@pytest.mark.parametrize(
    ("restart", "condition", "attempts"),
    [
        ("no", pb.RestartPolicy.CONDITION_NONE, 0),
        ("always", pb.RestartPolicy.CONDITION_ANY, 0),
        ("unless-stopped", pb.RestartPolicy.CONDITION_ANY, 0),
        ("on-failure", pb.RestartPolicy.CONDITION_ON_FAILURE, 0),
        ("on-failure:3", pb.RestartPolicy.CONDITION_ON_FAILURE, 3),
    ],
)
def test_restart(tmp_path: Path, restart: str, condition: int, attempts: int) -> None:
    web = spec(f'services: {{web: {{image: nginx, restart: "{restart}"}}}}', tmp_path)
    assert web.restart.condition == condition
    assert web.restart.max_attempts == attempts


def test_restart_policy_wins_and_bad_restart_is_named(tmp_path: Path) -> None:
    web = spec(
        """
services:
  web:
    image: nginx
    restart: always
    deploy: {restart_policy: {condition: on-failure, delay: 2s, max_attempts: "4", window: 1m}}
""",
        tmp_path,
    )
    assert web.restart.condition == pb.RestartPolicy.CONDITION_ON_FAILURE
    assert web.restart.delay.seconds == 2
    assert web.restart.max_attempts == 4
    assert web.restart.window.seconds == 60
    found = errors("services: {web: {image: nginx, restart: alway}}", tmp_path)
    assert found == [
        'services.web.restart: must be no, always, on-failure, on-failure:N or unless-stopped, got "alway"; '
        'did you mean "always"?'
    ]
    bad = errors("services: {web: {image: nginx, deploy: {restart_policy: {condition: sometimes}}}}", tmp_path)
    assert bad[0].startswith("services.web.deploy.restart_policy.condition: ")


def test_healthcheck_forms(tmp_path: Path) -> None:
    web = spec(
        """
services:
  web:
    image: nginx
    healthcheck:
      {test: curl -f http://localhost/, interval: 1m30s, timeout: 10s, retries: 3, start_period: 40s,
       start_interval: 5s}
""",
        tmp_path,
    )
    assert list(web.healthcheck.test) == ["CMD-SHELL", "curl -f http://localhost/"]
    assert web.healthcheck.interval.seconds == 90
    assert web.healthcheck.retries == 3
    assert web.healthcheck.start_interval.seconds == 5
    off = spec("services: {web: {image: nginx, healthcheck: {disable: true}}}", tmp_path)
    assert list(off.healthcheck.test) == ["NONE"]
    found = errors("services: {web: {image: nginx, healthcheck: {test: [CMD, x], interval: soon}}}", tmp_path)
    assert found[0].startswith("services.web.healthcheck.interval: ")


def test_stop_grace_period_and_depends_on(tmp_path: Path) -> None:
    loaded = read(
        """
services:
  web:
    image: nginx
    stop_grace_period: 1m30s
    depends_on:
      db: {condition: service_healthy, required: true}
      cache: {condition: service_started}
  db: {image: postgres:16}
  cache: {image: redis}
  init: {image: busybox, depends_on: [db]}
""",
        tmp_path,
    )
    web = loaded.deployment.specs[0]
    assert web.stop_grace_period.seconds == 90
    assert dict(web.depends_on) == {
        "myshop_db": pb.Dependency(condition=pb.Dependency.CONDITION_SERVICE_HEALTHY),
        "myshop_cache": pb.Dependency(condition=pb.Dependency.CONDITION_SERVICE_STARTED),
    }
    assert list(loaded.deployment.specs[3].depends_on) == ["myshop_db"]
    found = errors("services: {web: {image: nginx, depends_on: {db: {condition: soon}}}}", tmp_path)
    assert found[0].startswith("services.web.depends_on.db.condition: ")


def test_deploy_modes_replicas_resources_placement(tmp_path: Path) -> None:
    loaded = read(
        """
services:
  web:
    image: nginx
    deploy:
      replicas: 4
      resources: {limits: {cpus: "0.5", memory: 1g}, reservations: {cpus: 0.25, memory: 512mb}}
      placement: {constraints: ["node.labels.zone==a", node.hostname != h1], max_replicas_per_node: 2}
  agent: {image: nginx, deploy: {mode: global}}
  job: {image: nginx, deploy: {mode: replicated-job, replicas: 2, restart_policy: {condition: on-failure}}}
""",
        tmp_path,
    )
    web, agent, job = loaded.deployment.specs
    assert web.replicas == 4
    assert web.resources.cpu_limit == 0.5
    assert web.resources.memory_limit_bytes == GIB
    assert web.resources.cpu_reservation == 0.25
    assert web.resources.memory_reservation_bytes == 512 * MIB
    assert list(web.placement.constraints) == ["node.labels.zone==a", "node.hostname != h1"]
    assert web.placement.max_replicas_per_node == 2
    assert agent.mode == pb.SERVICE_MODE_GLOBAL
    assert job.mode == pb.SERVICE_MODE_JOB
    assert job.replicas == 2


def test_deploy_errors_carry_compose_paths(tmp_path: Path) -> None:
    found = errors(
        """
services:
  web:
    image: nginx
    deploy:
      mode: global
      replicas: 2
      resources: {limits: {cpus: lots}}
      placement: {constraints: [zone = a]}
      update_config: {order: random}
""",
        tmp_path,
    )
    paths = [line.split(":", 1)[0] for line in found]
    assert paths == [
        "services.web.deploy.replicas",
        "services.web.deploy.placement.constraints[0]",
        "services.web.deploy.resources.limits.cpus",
        "services.web.deploy.update_config.order",
    ]


def test_update_and_rollback_config(tmp_path: Path) -> None:
    web = spec(
        """
services:
  web:
    image: nginx
    deploy:
      update_config:
        {parallelism: 2, delay: 10s, failure_action: pause, monitor: 30s, max_failure_ratio: 0.1, order: start-first}
      rollback_config: {parallelism: 1, failure_action: continue}
""",
        tmp_path,
    )
    assert web.update.parallelism == 2
    assert web.update.order == pb.UpdateConfig.ORDER_START_FIRST
    assert web.update.failure_action == pb.UpdateConfig.FAILURE_ACTION_PAUSE
    assert web.update.max_failure_ratio == pytest.approx(0.1)
    assert web.rollback.parallelism == 1
    assert web.rollback.failure_action == pb.UpdateConfig.FAILURE_ACTION_CONTINUE


def test_volumes_networks_secrets_configs_are_scoped(tmp_path: Path) -> None:
    folder = tmp_path / "My Shop!"
    folder.mkdir()
    (folder / "pw.txt").write_text("hunter2")
    loaded = read(
        """
services:
  web:
    image: nginx
    volumes:
      - data:/data:ro
      - ./conf:/etc/conf
      - {type: tmpfs, target: /cache, tmpfs: {size: 64m}}
      - {type: volume, source: shared, target: /shared}
    tmpfs: /run
    networks: [front, default, outside]
    secrets: [pw, {source: token, target: api-token, uid: "1000", gid: "1000", mode: 0400}]
    configs: [{source: conf, target: /etc/app.conf}]
  db:
    image: postgres:16
volumes:
  data:
  shared: {external: true, name: nfs-share}
networks:
  front: {labels: [tier=front], internal: true}
  outside: {external: true}
secrets:
  pw: {file: ./pw.txt}
  token: {environment: API_TOKEN}
configs:
  conf: {content: "key = value"}
""",
        tmp_path,
        environ={"API_TOKEN": "t0ken"},
    )
    deployment = loaded.deployment
    web, db = deployment.specs
    assert [(m.type, m.source, m.target, m.read_only, m.tmpfs_size_bytes) for m in web.mounts] == [
        (pb.Mount.TYPE_VOLUME, "myshop_data", "/data", True, 0),
        (pb.Mount.TYPE_BIND, str(folder / "conf"), "/etc/conf", False, 0),
        (pb.Mount.TYPE_TMPFS, "", "/cache", False, 64 * MIB),
        (pb.Mount.TYPE_VOLUME, "nfs-share", "/shared", False, 0),
        (pb.Mount.TYPE_TMPFS, "", "/run", False, 0),
    ]
    assert list(web.networks) == ["myshop_front", "myshop_default", "outside"]
    assert list(db.networks) == []
    assert [(s.name, s.target, s.uid, s.gid, s.HasField("mode"), s.mode) for s in web.secrets] == [
        ("myshop_pw", "pw", 0, 0, False, 0),
        ("myshop_token", "api-token", 1000, 1000, True, 0o400),
    ]
    assert [(c.name, c.target) for c in web.configs] == [("myshop_conf", "/etc/app.conf")]
    # Without a target, a secret is at /run/secrets/<its name in the file>, a config at /<its name>.
    short = read(
        "services: {web: {image: nginx, secrets: [pw], configs: [conf]}}\n"
        "secrets: {pw: {external: true}}\nconfigs: {conf: {content: x}}",
        tmp_path,
    ).deployment.specs[0]
    assert [(s.name, s.target) for s in short.secrets] == [("pw", "pw")]
    assert [(c.name, c.target) for c in short.configs] == [("myshop_conf", "/conf")]
    assert [(v.name) for v in deployment.volumes] == ["myshop_data"]
    assert [(n.name, dict(n.labels), n.internal) for n in deployment.networks] == [
        ("myshop_front", {"tier": "front"}, True),
        ("myshop_default", {}, False),
    ]
    assert [(s.name, s.data) for s in deployment.secrets] == [("myshop_pw", b"hunter2"), ("myshop_token", b"t0ken")]
    assert [(c.name, c.data) for c in deployment.configs] == [("myshop_conf", b"key = value")]


def test_a_declared_default_network_is_what_services_without_networks_join(tmp_path: Path) -> None:
    loaded = read(
        "services: {web: {image: nginx}, db: {image: postgres, networks: [default]}}\n"
        "networks: {default: {external: true, name: shared-net}}",
        tmp_path,
    )
    assert [list(s.networks) for s in loaded.deployment.specs] == [["shared-net"], ["shared-net"]]
    assert list(loaded.deployment.networks) == []
    labelled = read("services: {web: {image: nginx}}\nnetworks: {default: {labels: {a: b}}}", tmp_path)
    assert list(labelled.deployment.specs[0].networks) == []
    assert [(n.name, dict(n.labels)) for n in labelled.deployment.networks] == [("myshop_default", {"a": "b"})]


def test_undeclared_references_are_errors(tmp_path: Path) -> None:
    found = errors(
        "services: {web: {image: nginx, volumes: [data:/data], networks: [front], secrets: [pw], "
        "configs: [{source: c}]}}",
        tmp_path,
    )
    assert [line.split(":", 1)[0] for line in found] == [
        "services.web.volumes[0]",
        "services.web.networks[0]",
        "services.web.secrets[0]",
        "services.web.configs[0].source",
    ]


def test_a_near_miss_is_guessed_and_a_name_is_declared_once(tmp_path: Path) -> None:
    found = errors("services: {web: {image: nginx, volumes: [dta:/data]}}\nvolumes: {data: }", tmp_path)
    assert found == [
        'services.web.volumes[0]: volume "dta" is not declared in the top-level volumes; did you mean "data"? '
        "Or declare it there (with external: true for one that exists outside the file)"
    ]
    twice = errors("services: {web: {image: nginx}}\nvolumes: {a: {name: shared}, b: {name: shared}}", tmp_path)
    assert twice == ['volumes.b: is named "shared" in the cluster, as volumes.a is already; give each its own name']


def test_a_declared_volume_s_labels_go_on_its_mounts(tmp_path: Path) -> None:
    web = spec(
        "services: {web: {image: nginx, volumes: [data:/data]}}\nvolumes: {data: {labels: [backup=daily]}}", tmp_path
    )
    assert dict(web.mounts[0].volume_labels) == {"backup": "daily"}


def test_mount_checks_use_the_spec_rules_on_compose_paths(tmp_path: Path) -> None:
    found = errors(
        "services: {web: {image: nginx, volumes: ['data:relative'], tmpfs: [/t:size=lots]}}\nvolumes: {data: }",
        tmp_path,
    )
    assert found[0].startswith("services.web.volumes[0]: the target must be an absolute path")
    assert found[1].startswith("services.web.tmpfs[0]: ")


def test_every_unsupported_key_is_listed_with_its_path(tmp_path: Path) -> None:
    text = """
version: "3.9"
include: [other.yaml]
x-anchors: {anything: goes}
services:
  web:
    image: nginx
    x-note: ignored
    expose: [80]
    privileged: true
    cap_add: [NET_ADMIN]
    deploy:
      endpoint_mode: vip
      resources: {reservations: {devices: [{capabilities: [gpu]}]}}
    healthcheck: {test: [CMD, "true"]}
    volumes: [{type: bind, source: /srv, target: /srv, bind: {propagation: rshared}}]
"""
    found = errors(text, tmp_path)
    assert [line.split(":", 1)[0] for line in found] == [
        "include",
        "services.web.privileged",
        "services.web.cap_add",
        "services.web.deploy.resources.reservations.devices",
        "services.web.deploy.endpoint_mode",
        "services.web.volumes[0].bind.propagation",
    ]
    loaded = read(text, tmp_path, ignore_unsupported=True)
    assert [w.split(":", 1)[0] for w in loaded.warnings] == [line.split(":", 1)[0] for line in found]
    assert all(w.endswith("ignored") for w in loaded.warnings)


def test_mount_options_that_are_not_read_are_unsupported(tmp_path: Path) -> None:
    # nocopy and create_host_path were accepted and silently not applied; now they are listed like any other.
    text = """
services:
  web:
    image: nginx
    volumes:
      - data:/data:nocopy
      - {type: volume, source: data, target: /v, volume: {nocopy: true}}
      - {type: bind, source: /srv, target: /srv, bind: {create_host_path: true}}
volumes: {data: }
"""
    found = errors(text, tmp_path)
    assert [line.split(": ", 1)[0] for line in found] == [
        "services.web.volumes[0]",
        "services.web.volumes[1].volume.nocopy",
        "services.web.volumes[2].bind.create_host_path",
    ]
    assert '"nocopy"' in found[0] and all("not supported by Dockyard" in line for line in found)
    loaded = read(text, tmp_path, ignore_unsupported=True)
    web = loaded.deployment.specs[0]
    # With --ignore-unsupported each mount is read without the option, as for the short form's other options.
    assert [m.target for m in web.mounts] == ["/data", "/v", "/srv"]


@pytest.mark.parametrize("size", ["99999999999999999999999", "'99999999999999999999999'", "-1", "'1e30g'"])
def test_a_tmpfs_size_beyond_what_a_mount_holds_is_refused_on_its_path(tmp_path: Path, size: str) -> None:
    # An integer beyond int64 used to crash the apply (protobuf: "Value out of range").
    found = errors(
        f"services: {{web: {{image: nginx, volumes: [{{type: tmpfs, target: /t, tmpfs: {{size: {size}}}}}]}}}}",
        tmp_path,
    )
    assert len(found) == 1 and found[0].startswith("services.web.volumes[0].tmpfs.size: "), found


def test_unknown_keys_are_errors_even_when_ignoring_unsupported(tmp_path: Path) -> None:
    found = errors("services: {web: {image: nginx, enviroment: {A: b}}}", tmp_path, ignore_unsupported=True)
    assert found == ['services.web.enviroment: is not a Compose key here; did you mean "environment"?']


def test_interpolation_errors_name_the_key_path(tmp_path: Path) -> None:
    found = errors("services: {web: {image: 'nginx:${TAG:?set TAG}', command: echo $1}}", tmp_path)
    assert found[0].startswith("services.web.image: required variable TAG is not set: set TAG")
    assert found[1].startswith("services.web.command: invalid interpolation")


def test_dotenv_beside_the_file_and_process_env_wins(tmp_path: Path) -> None:
    folder = tmp_path / "My Shop!"
    folder.mkdir()
    (folder / ".env").write_text("TAG=1.25\nREPLICAS=3\n")
    text = "services: {web: {image: 'nginx:${TAG}', deploy: {replicas: '${REPLICAS}'}}}"
    assert spec(text, tmp_path).image == "nginx:1.25"
    assert spec(text, tmp_path).replicas == 3
    assert spec(text, tmp_path, environ={"TAG": "1.27"}).image == "nginx:1.27"


def test_anchors_and_merge_keys(tmp_path: Path) -> None:
    loaded = read(
        """
x-defaults: &defaults
  image: nginx
  environment: {A: "1"}
  deploy: {replicas: 2}
services:
  one:
    <<: *defaults
  two:
    <<: *defaults
    environment: {A: "2"}
""",
        tmp_path,
    )
    one, two = loaded.deployment.specs
    assert (one.image, dict(one.env), one.replicas) == ("nginx", {"A": "1"}, 2)
    assert dict(two.env) == {"A": "2"}


def test_a_refused_service_name_is_reported_once(tmp_path: Path) -> None:
    found = errors("services: {celery_worker: {image: x}, web: {image: y}}", tmp_path)
    assert len(found) == 1
    assert found[0].startswith('services.celery_worker: service name must be 1 to 63 lowercase letters, digits or "-"')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "compose.yaml: the file is empty"),
        ("[1, 2]", "compose.yaml: must be a mapping"),
        ("version: '3'", 'services: is required; put each service under a top-level "services:" mapping'),
        ("services: []", "services: must be a mapping from service names to services, got a list"),
    ],
)
def test_document_shapes(tmp_path: Path, text: str, message: str) -> None:
    assert errors(text, tmp_path)[0].startswith(message)


@pytest.mark.parametrize(
    ("text", "name", "expected"),
    [
        ("services: {web: {image: nginx, environment: {A: b}}}", "spec.yaml", FORMAT_COMPOSE),
        ("services: {web: {image: nginx, deploy: {replicas: 2}}}", "spec.yaml", FORMAT_COMPOSE),
        ("services: {web: {image: nginx, restart: always}}", "spec.yaml", FORMAT_COMPOSE),
        ("version: '3'\nservices: {web: {image: nginx}}", "spec.yaml", FORMAT_COMPOSE),
        ("name: x\nservices: {web: {image: nginx}}", "spec.yaml", FORMAT_COMPOSE),
        ("services: {web: {image: nginx}}", "compose.yaml", FORMAT_COMPOSE),
        ("services: {web: {image: nginx}}", "docker-compose.yml", FORMAT_COMPOSE),
        ("services: {web: {image: nginx}}", "compose.prod.yaml", FORMAT_COMPOSE),
        ("services: {web: {image: nginx}}", "spec.yaml", FORMAT_DOCKYARD),
        (
            "services: {web: {image: nginx, env: {A: b}, replicas: 2, restart: {condition: any}}}",
            "app.yaml",
            FORMAT_DOCKYARD,
        ),
        ("[]", "app.yaml", FORMAT_DOCKYARD),
    ],
)
def test_detect_format(text: str, name: str, expected: str) -> None:
    assert detect_format(parse_yaml(text, name), name)[0] == expected
