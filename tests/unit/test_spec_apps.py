"""Our YAML's keys for real applications: stack, mounts, networks, secrets, configs, entrypoint and hostname.

Every key read into the spec and the request extras (Deployment), every error naming its field path and
the fix, the proto-level checks the controller runs, and the writer and diff for the new fields.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dockyard.spec import (
    Deployment,
    SpecError,
    load_deployment,
    load_deployment_file,
    schema,
    spec_to_document,
    validate_service,
)
from dockyard.spec.diff import same_task_spec, spec_changes
from dockyard.spec.loading import parse_yaml
from dockyard.spec.reader import read_deployment
from dockyard.spec.units import parse_mount
from dockyard.spec.writer import document_name
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import types_pb2 as pb

FILES = {"pw.txt": b"hunter2", "big.txt": b"x" * (schema.FILE_BYTES.maximum + 1)}


def read(name: str) -> bytes:
    """A file system holding FILES only."""
    if name in FILES:
        return FILES[name]
    raise FileNotFoundError(2, "No such file or directory")


def errs(text: str) -> list[str]:
    """The problems of a document, read with FILES."""
    _, issues = read_deployment(parse_yaml(textwrap.dedent(text), "app.yaml"), "app.yaml", read)
    return [str(issue) for issue in issues]


def svc(body: str, top: str = "") -> list[str]:
    """The problems of a service `web` with image x and the fields of `body`, after top-level `top`."""
    return errs(top + "services:\n  web:\n    image: x\n" + textwrap.indent(textwrap.dedent(body), "    "))


def deploy(text: str) -> Deployment:
    """Reads a document that must be valid."""
    deployment, issues = read_deployment(parse_yaml(textwrap.dedent(text), "app.yaml"), "app.yaml", read)
    assert [str(issue) for issue in issues] == []
    return deployment


def service_case(name: str, body: str, top: str, *expected: str) -> Any:
    """A row of SERVICE_ERRORS: a service's fields (after top-level `top`), then the exact lines they produce."""
    return pytest.param(body, top, list(expected), id=name)


def document_case(name: str, text: str, *expected: str) -> Any:
    """A row of DOCUMENT_ERRORS: a whole document, then the exact lines it produces."""
    return pytest.param(text, list(expected), id=name)


SERVICE_ERRORS = [
    service_case(
        "entry-type", "entrypoint: 3", "", "services.web.entrypoint: must be a list of strings or a string, got 3"
    ),
    service_case(
        "entry-quote",
        'entrypoint: "sh -c \'x"',
        "",
        "services.web.entrypoint: cannot be split into words (no closing quotation); fix the quoting or write a list",
    ),
    service_case(
        "host-bad",
        "hostname: -bad",
        "",
        'services.web.hostname: must be a host name of at most 63 letters, digits, "-" and ".", each part '
        'starting and ending with a letter or digit, like "db-1", got "-bad"',
    ),
    service_case(
        "host-num",
        "hostname: 12",
        "",
        'services.web.hostname: must be a host name like "db-1", got 12; put the value in quotes',
    ),
    service_case(
        "m-notlist",
        "mounts: data:/x",
        "",
        'services.web.mounts: must be a list of mounts like ["db-data:/var/lib/postgresql/data", '
        '"/srv/www:/usr/share/nginx/html:ro"], got "data:/x"',
    ),
    service_case(
        "m-anon",
        "mounts: [/data]",
        "",
        'services.web.mounts[0]: an anonymous volume is not supported, got "/data"; name it, like "data:/data"',
    ),
    service_case(
        "m-rel",
        "mounts: ['./data:/x']",
        "",
        'services.web.mounts[0].source: must be an absolute host path, got "./data"; write the full path, '
        'like "/srv/data"',
    ),
    service_case(
        "m-tilde",
        "mounts: ['~/data:/x']",
        "",
        'services.web.mounts[0].source: must be an absolute host path, got "~/data"; write the full path, '
        'like "/srv/data"',
    ),
    service_case(
        "m-opt",
        "mounts: ['data:/x:z']",
        "",
        'services.web.mounts[0]: the option "z" is not supported, got "data:/x:z"; remove it',
    ),
    service_case(
        "m-opt2",
        "mounts: ['data:/x:rx']",
        "",
        'services.web.mounts[0]: unknown option "rx" in "data:/x:rx"; use "ro" or "rw"',
    ),
    service_case(
        "m-colons",
        "mounts: ['a:/b:ro:x']",
        "",
        'services.web.mounts[0]: must be "VOLUME:/path[:ro]" or "/host/path:/path[:ro]", or a mapping with '
        'type, source and target, got "a:/b:ro:x"',
    ),
    service_case(
        "m-empty",
        "mounts: [':/x']",
        "",
        'services.web.mounts[0]: must be "VOLUME:/path[:ro]" or "/host/path:/path[:ro]", or a mapping with '
        'type, source and target, got ":/x"',
    ),
    service_case(
        "m-item",
        "mounts: [3]",
        "",
        'services.web.mounts[0]: must be "VOLUME:/path[:ro]" or "/host/path:/path[:ro]", or a mapping with '
        "type, source and target, got 3",
    ),
    service_case(
        "m-reltarget",
        "mounts: ['data:x']",
        "",
        'services.web.mounts[0].target: must be an absolute path, starting with "/", got "x"',
    ),
    service_case(
        "m-root",
        "mounts: ['data:/']",
        "",
        'services.web.mounts[0].target: must not be "/"; mount on a folder inside the container',
    ),
    service_case(
        "m-dots",
        "mounts: ['data:/a/../b']",
        "",
        'services.web.mounts[0].target: must not contain "..", got "/a/../b"; write the path it leads to',
    ),
    service_case(
        "m-dup",
        "mounts: ['data:/x', '/srv:/x/']",
        "",
        'services.web.mounts[1].target: "/x" is already the target of mounts[0]; give each its own path',
    ),
    service_case(
        "m-both",
        "mounts: ['a1:/x']\nvolumes: ['b1:/y']",
        "",
        'services.web.volumes: is Compose\'s name for "mounts"; write one of them',
    ),
    service_case(
        "m-badname",
        "mounts: ['a:/x']",
        "",
        'services.web.mounts[0].source: volume name must be at least 2 letters, digits, "_", "." or "-", '
        'starting with a letter or digit, got "a"',
    ),
    service_case(
        "m-long-notarget",
        "mounts: [{type: volume, source: data}]",
        "",
        'services.web.mounts[0].target: is required; give the absolute path in the container, like "/data"',
    ),
    service_case(
        "m-long-type",
        "mounts: [{type: volumes, source: data, target: /x}]",
        "",
        'services.web.mounts[0].type: must be volume, bind or tmpfs, got "volumes"; did you mean "volume"?',
    ),
    service_case(
        "m-long-tmpfs-src",
        "mounts: [{type: tmpfs, source: data, target: /x}]",
        "",
        "services.web.mounts[0].source: a tmpfs has no source; remove it",
    ),
    service_case(
        "m-long-bind-nosrc",
        "mounts: [{type: bind, target: /x}]",
        "",
        'services.web.mounts[0].source: is required for a bind mount: give the host path, like "/srv/data"',
    ),
    service_case(
        "m-long-vol-nosrc",
        "mounts: [{target: /x}]",
        "",
        "services.web.mounts[0].source: is required for a volume: name the volume, like "
        '"db-data:/var/lib/postgresql/data"',
    ),
    service_case(
        "m-long-labels-bind",
        "mounts: [{type: bind, source: /srv, target: /x, labels: {a: b}}]",
        "",
        'services.web.mounts[0].labels: applies only to type "volume"; remove it',
    ),
    service_case(
        "m-long-tmpfs-vol",
        "mounts: [{source: data, target: /x, tmpfs: {size: 1MiB}}]",
        "",
        'services.web.mounts[0].tmpfs: applies only to type "tmpfs"; remove it',
    ),
    service_case(
        "m-long-tmpfs-size",
        "mounts: [{type: tmpfs, target: /x, tmpfs: {size: lots}}]",
        "",
        'services.web.mounts[0].tmpfs.size: must be a size like 512MiB or 2GiB, got "lots"',
    ),
    service_case(
        "m-long-tmpfs-huge",
        "mounts: [{type: tmpfs, target: /x, tmpfs: {size: 99999999999999999999999}}]",
        "",
        "services.web.mounts[0].tmpfs.size: must be 0 to 9223372036854775807 bytes, got 99999999999999999999999",
    ),
    service_case(
        "m-long-tmpfs-notmap",
        "mounts: [{type: tmpfs, target: /x, tmpfs: 64m}]",
        "",
        'services.web.mounts[0].tmpfs: must be a mapping like {size: 64MiB}, got "64m"',
    ),
    service_case(
        "m-long-unknown",
        "mounts: [{type: bind, source: /srv, target: /x, bind: {propagation: shared}}]",
        "",
        "services.web.mounts[0].bind: unknown field; expected one of type, source, target, read_only, labels, tmpfs",
    ),
    service_case(
        "m-long-ro",
        "mounts: [{source: data, target: /x, read_only: yes}]",
        "",
        'services.web.mounts[0].read_only: must be true or false, got "yes"',
    ),
    service_case(
        "m-long-srcnum",
        "mounts: [{source: 3, target: /x}]",
        "",
        "services.web.mounts[0].source: must be a string, got 3; put the value in quotes",
    ),
    service_case(
        "m-labels-reserved",
        "mounts: [{source: data, target: /x, labels: {dockyard.x: y}}]",
        "",
        'services.web.mounts[0].labels["dockyard.x"]: keys starting with "dockyard." are reserved for the '
        "labels Dockyard sets itself; choose another key",
    ),
    service_case(
        "n-notlist",
        "networks: front",
        "",
        'services.web.networks: must be a list of network names like [front, back], got "front"',
    ),
    service_case(
        "n-map",
        "networks: {front: {}}",
        "",
        "services.web.networks: must be a list of network names like [front, back], got a mapping",
    ),
    service_case(
        "n-item",
        "networks: [3]",
        "",
        "services.web.networks[0]: must be a network name, got 3; put the value in quotes",
    ),
    service_case(
        "n-dup",
        "networks: [front, front]",
        "",
        'services.web.networks[1]: "front" is already listed as networks[0]; remove one',
    ),
    service_case(
        "n-bad",
        "networks: [a]",
        "",
        'services.web.networks[0]: network name must be at least 2 letters, digits, "_", "." or "-", '
        'starting with a letter or digit, got "a"',
    ),
    service_case(
        "s-notlist",
        "secrets: pw",
        "",
        "services.web.secrets: must be a list of secret names, or of mappings like {source: db_password, "
        'mode: 0400}, got "pw"',
    ),
    service_case(
        "s-item",
        "secrets: [3]",
        "",
        "services.web.secrets[0]: must be a secret name or a mapping with source and target, got 3",
    ),
    service_case(
        "s-nosource", "secrets: [{target: x}]", "", "services.web.secrets[0].source: is required; name the secret"
    ),
    service_case(
        "s-srcnum",
        "secrets: [{source: 3}]",
        "",
        "services.web.secrets[0].source: must be a secret name, got 3; put the value in quotes",
    ),
    service_case(
        "s-mode",
        "secrets: [{source: pw1, mode: 01000}]",
        "",
        "services.web.secrets[0].mode: must be permission bits from 0 to 0777, got 01000; write it in octal "
        "with a leading 0, as 0440",
    ),
    service_case(
        "s-modestr",
        "secrets: [{source: pw1, mode: '0x9'}]",
        "",
        'services.web.secrets[0].mode: must be octal permission bits like 0440, got "0x9"',
    ),
    service_case(
        "s-modebool",
        "secrets: [{source: pw1, mode: true}]",
        "",
        "services.web.secrets[0].mode: must be permission bits like 0440, got true",
    ),
    service_case(
        "s-uid",
        "secrets: [{source: pw1, uid: abc}]",
        "",
        'services.web.secrets[0].uid: must be a numeric id from 0 to 4294967295, got "abc"',
    ),
    service_case(
        "s-uidneg",
        "secrets: [{source: pw1, gid: -1}]",
        "",
        "services.web.secrets[0].gid: must be a numeric id from 0 to 4294967295, got -1",
    ),
    service_case(
        "s-dots",
        "secrets: [{source: pw1, target: ../x}]",
        "",
        'services.web.secrets[0].target: must not contain "..", got "../x"; name a file under /run/secrets',
    ),
    service_case(
        "s-dup",
        "secrets: [pw1, pw1]",
        "",
        'services.web.secrets[1].target: "/run/secrets/pw1" is already the target of secrets[0]; give each '
        "its own path",
    ),
    service_case(
        "s-vs-mount",
        "mounts: ['data:/run/secrets/pw1']\nsecrets: [pw1]",
        "",
        'services.web.secrets[0].target: "/run/secrets/pw1" is already the target of mounts[0]; give each its own path',
    ),
    service_case(
        "s-unknown",
        "secrets: [{source: pw1, external: true}]",
        "",
        "services.web.secrets[0].external: unknown field; expected one of source, target, uid, gid, mode",
    ),
    service_case(
        "s-target-num",
        "secrets: [{source: pw1, target: 3}]",
        "",
        "services.web.secrets[0].target: must be a path, got 3; put the value in quotes",
    ),
    service_case(
        "c-reltarget",
        "configs: [{source: nginx, target: nginx.conf}]",
        "",
        'services.web.configs[0].target: must be an absolute path, starting with "/", got "nginx.conf"',
    ),
    service_case(
        "c-dup",
        "configs: [ab, {source: cd, target: /ab}]",
        "",
        'services.web.configs[1].target: "/ab" is already the target of configs[0]; give each its own path',
    ),
    service_case(
        "st-mismatch",
        "stack: other",
        "stack: shop\n",
        'services.web.stack: is "other", but the file deploys stack "shop"; remove it',
    ),
    service_case(
        "st-bad",
        "stack: Shop",
        "",
        'services.web.stack: stack name must be lowercase letters, digits, "_" or "-", starting with a '
        'letter or digit, got "Shop"; did you mean "shop"?',
    ),
    service_case(
        "st-num", "stack: 3", "", 'services.web.stack: must be a stack name like "shop", got 3; put the value in quotes'
    ),
]
DOCUMENT_ERRORS = [
    document_case(
        "volume-typo",
        "volumes: {db-data: {}}\nservices: {web: {image: x, mounts: ['db_data:/x']}}",
        'services.web.mounts[0].source: "db_data" is not declared under the top-level volumes; did you mean '
        '"db-data"? (a volume that exists outside the file is declared with external: true)',
    ),
    document_case(
        "network-typo",
        "networks: {front: {}}\nservices: {web: {image: x, networks: [frnt]}}",
        'services.web.networks[0]: "frnt" is not declared under the top-level networks; did you mean "front"? '
        "(a network that exists outside the file is declared with external: true)",
    ),
    document_case(
        "secret-typo",
        "secrets: {db_password: {external: true}}\nservices: {web: {image: x, secrets: [{source: db_pasword}]}}",
        'services.web.secrets[0].source: "db_pasword" is not declared under the top-level secrets; did you mean '
        '"db_password"? (a secret that exists outside the file is declared with external: true)',
    ),
    document_case(
        "same-cluster-name",
        "networks: {a1: {name: x1}, b1: {name: x1}}\nservices: {web: {image: x}}",
        'networks.b1: is named "x1" in the cluster, as networks.a1 is already; give each its own name',
    ),
    document_case(
        "compose-keys",
        'name: shop\nversion: "3"\nservices: {web: {image: x}}',
        'name: unknown field; did you mean "stack"? (Compose\'s project name is the stack)',
        "version: unknown field; remove it; the file has no version",
    ),
    document_case(
        "top-stack-bad",
        "stack: My Shop\nservices: {web: {image: x}}",
        'stack: stack name must be lowercase letters, digits, "_" or "-", starting with a letter or digit, '
        'got "My Shop"; did you mean "myshop"?',
    ),
    document_case(
        "top-stack-num",
        "stack: 3\nservices: {web: {image: x}}",
        'stack: must be a stack name like "shop", got 3; put the value in quotes',
    ),
    document_case(
        "top-two-stacks",
        "services: {web: {image: x, stack: a}, db: {image: x, stack: b}}",
        'services.web.stack: the services of one file belong to one stack; give it once, as the top-level "stack"',
        'services.db.stack: the services of one file belong to one stack; give it once, as the top-level "stack"',
    ),
    document_case(
        "net-notmap",
        "networks: [a]\nservices: {web: {image: x}}",
        "networks: must be a mapping from network names to their settings, got a list",
    ),
    document_case(
        "net-entry",
        "networks: {front: 3}\nservices: {web: {image: x}}",
        "networks.front: must be a mapping like {labels: {team: web}}, or empty, got 3",
    ),
    document_case(
        "net-unknown",
        "networks: {front: {driver: overlay}}\nservices: {web: {image: x}}",
        "networks.front.driver: unknown field; expected one of name, external, labels, internal",
    ),
    document_case(
        "net-badname",
        "networks: {front: {name: 'x y'}}\nservices: {web: {image: x}}",
        'networks.front.name: network name must be at least 2 letters, digits, "_", "." or "-", starting '
        'with a letter or digit, got "x y"',
    ),
    document_case(
        "net-keyname",
        "networks: {a: {}}\nservices: {web: {image: x}}",
        'networks.a: network name must be at least 2 letters, digits, "_", "." or "-", starting with a '
        'letter or digit, got "a"',
    ),
    document_case(
        "net-numkey",
        "networks: {3: {}}\nservices: {web: {image: x}}",
        "networks: network name 3 must be a string; put it in quotes",
    ),
    document_case(
        "net-ext-labels",
        "networks: {front: {external: true, labels: {a: b}}}\nservices: {web: {image: x}}",
        "networks.front.labels: cannot be given for an external network, which exists already; remove it",
    ),
    document_case(
        "net-internal",
        "networks: {front: {internal: 1}}\nservices: {web: {image: x}}",
        "networks.front.internal: must be true or false, got 1",
    ),
    document_case(
        "vol-labels",
        "volumes: {data: {labels: {dockyard.x: y}}}\nservices: {web: {image: x}}",
        'volumes.data.labels["dockyard.x"]: keys starting with "dockyard." are reserved for the labels '
        "Dockyard sets itself; choose another key",
    ),
    document_case(
        "sec-nofile",
        "secrets: {pw: {}}\nservices: {web: {image: x}}",
        "secrets.pw: needs file: PATH (the file holding the secret), or external: true for one made with "
        "`dockyard secret create`",
    ),
    document_case(
        "sec-null",
        "secrets: {pw: }\nservices: {web: {image: x}}",
        "secrets.pw: needs file: PATH (the file holding the secret), or external: true for one made with "
        "`dockyard secret create`",
    ),
    document_case(
        "sec-missing",
        "secrets: {pw: {file: nope.txt}}\nservices: {web: {image: x}}",
        'secrets.pw.file: cannot read "nope.txt": No such file or directory; give a readable file (a '
        "relative path starts at the spec file's folder)",
    ),
    document_case(
        "sec-big",
        "secrets: {pw: {file: big.txt}}\nservices: {web: {image: x}}",
        'secrets.pw.file: "big.txt" is larger than 500KiB, the most a secret or config holds; make it smaller',
    ),
    document_case(
        "sec-filenum",
        "secrets: {pw: {file: 3}}\nservices: {web: {image: x}}",
        'secrets.pw.file: must be the path of a file, like "./db_password.txt", got 3; put the value in quotes',
    ),
    document_case(
        "sec-content",
        "secrets: {pw: {content: x}}\nservices: {web: {image: x}}",
        "secrets.pw.content: unknown field; expected one of name, external, file, labels",
    ),
    document_case(
        "sec-ext-file",
        "secrets: {pw: {external: true, file: pw.txt}}\nservices: {web: {image: x}}",
        "secrets.pw.file: cannot be given for an external secret, which exists already; remove it",
    ),
    document_case(
        "cfg-both",
        "configs: {c1: {file: pw.txt, content: x}}\nservices: {web: {image: x}}",
        "configs.c1.content: cannot be combined with file; keep one of them",
    ),
    document_case(
        "cfg-none",
        "configs: {c1: {}}\nservices: {web: {image: x}}",
        "configs.c1: needs file: PATH (the file holding the config) or content: TEXT, or external: true for "
        "one made with `dockyard config create`",
    ),
    document_case(
        "cfg-contentnum",
        "configs: {c1: {content: 3}}\nservices: {web: {image: x}}",
        "configs.c1.content: must be the config's text, got 3; put the value in quotes",
    ),
    document_case(
        "ext-name",
        "secrets: {pw: {external: yes}}\nservices: {web: {image: x}}",
        'secrets.pw.external: must be true or false, got "yes"',
        "secrets.pw: needs file: PATH (the file holding the secret), or external: true for one made with "
        "`dockyard secret create`",
    ),
]


@pytest.mark.parametrize(("body", "top", "expected"), SERVICE_ERRORS)
def test_service_error(body: str, top: str, expected: list[str]) -> None:
    assert svc(body, top) == expected


@pytest.mark.parametrize(("text", "expected"), DOCUMENT_ERRORS)
def test_document_error(text: str, expected: list[str]) -> None:
    assert errs(text) == expected


def test_every_error_names_a_field_path_and_says_what_to_do() -> None:
    for row in [*SERVICE_ERRORS, *DOCUMENT_ERRORS]:
        for line in row.values[-1]:
            path, _, message = line.partition(": ")
            assert path and message, line
            # Every path starts at a top-level key of the file (name and version: Compose's, refused).
            top_level = ("services", "stack", "networks", "volumes", "secrets", "configs", "name", "version")
            assert path.split(".")[0].split("[")[0] in top_level, line


SHOP = """
stack: shop
networks:
  front: {}
  back: {internal: true, labels: {tier: data}}
  public: {external: true}
  edge: {name: edge-net}
volumes:
  db-data: {labels: {backup: daily}}
  old: {external: true}
secrets:
  db_password: {file: pw.txt}
  api_key: {external: true}
configs:
  nginx: {content: "server {}"}
services:
  web:
    image: nginx:1.27
    entrypoint: /docker-entrypoint.sh nginx
    hostname: web-1
    networks: [front, public, edge, default]
    configs: [nginx, {source: nginx, target: /etc/nginx/nginx.conf, mode: 0440}]
    volumes: ["/srv/www:/usr/share/nginx/html:ro", {type: tmpfs, target: /cache, tmpfs: {size: 64MiB}}]
    depends_on: [db]
  db:
    image: postgres:16
    networks: [back]
    mounts: ["db-data:/var/lib/postgresql/data", "old:/old:rw", "other:/other"]
    secrets: [db_password, {source: api_key, target: /etc/key, uid: "999", gid: 999, mode: "0400"}]
  worker:
    image: app:1
"""


def test_a_stack_file_reads_into_scoped_specs_and_request_extras() -> None:
    deployment = deploy(SHOP)
    assert deployment.stack == "shop"
    assert deployment.names == ["shop_web", "shop_db", "shop_worker"]
    assert {spec.stack for spec in deployment.specs} == {"shop"}
    # Declared objects are scoped and made by the apply; external ones are neither.
    assert deployment.networks == [
        cpb.NetworkSpec(name="shop_front"),
        cpb.NetworkSpec(name="shop_back", internal=True, labels={"tier": "data"}),
        cpb.NetworkSpec(name="edge-net"),
    ]
    assert deployment.volumes == [cpb.VolumeSpec(name="shop_db-data", labels={"backup": "daily"})]
    assert deployment.secrets == [cpb.FileSpec(name="shop_db_password", data=b"hunter2")]
    assert deployment.configs == [cpb.FileSpec(name="shop_nginx", data=b"server {}")]
    web, db, worker = deployment.specs
    assert list(web.entrypoint) == ["/docker-entrypoint.sh", "nginx"]
    assert web.hostname == "web-1"
    assert list(web.networks) == ["shop_front", "public", "edge-net", "shop_default"]
    assert list(web.configs) == [
        pb.FileRef(name="shop_nginx", target="/nginx"),
        pb.FileRef(name="shop_nginx", target="/etc/nginx/nginx.conf", mode=0o440),
    ]
    assert list(web.mounts) == [
        pb.Mount(type=pb.Mount.TYPE_BIND, source="/srv/www", target="/usr/share/nginx/html", read_only=True),
        pb.Mount(type=pb.Mount.TYPE_TMPFS, target="/cache", tmpfs_size_bytes=64 * 1024**2),
    ]
    assert dict(web.depends_on) == {"shop_db": pb.Dependency(condition=pb.Dependency.CONDITION_SERVICE_STARTED)}
    assert list(db.mounts) == [
        pb.Mount(
            type=pb.Mount.TYPE_VOLUME,
            source="shop_db-data",
            target="/var/lib/postgresql/data",
            volume_labels={"backup": "daily"},
        ),
        pb.Mount(type=pb.Mount.TYPE_VOLUME, source="old", target="/old"),
        # Not declared: the name as written, an existing volume or one made on first use.
        pb.Mount(type=pb.Mount.TYPE_VOLUME, source="other", target="/other"),
    ]
    assert list(db.secrets) == [
        # In the container the file keeps the name the file gave it.
        pb.FileRef(name="shop_db_password", target="db_password"),
        pb.FileRef(name="api_key", target="/etc/key", uid=999, gid=999, mode=0o400),
    ]
    assert not worker.networks  # the stack's default network, in effect
    for spec in deployment.specs:
        assert validate_service(spec) == []


def test_a_file_without_a_stack_names_everything_as_written() -> None:
    deployment = deploy(
        """
        networks: {backend: {}}
        secrets: {db_password: {file: pw.txt}}
        services:
          web:
            image: x
            networks: [backend, dockyard]
            secrets: [db_password]
            depends_on: [db]
          db: {image: y, networks: [default]}
        """
    )
    assert deployment.stack == ""
    assert deployment.names == ["web", "db"]
    web, db = deployment.specs
    assert list(web.networks) == ["backend", "dockyard"]
    assert list(web.secrets) == [pb.FileRef(name="db_password")]
    assert list(web.depends_on) == ["db"]
    # "default" means the stack's default network only in a stack.
    assert list(db.networks) == ["default"]
    assert deployment.networks == [cpb.NetworkSpec(name="backend")]
    assert deployment.extras().stack == ""


def test_a_service_level_stack_is_the_files_stack() -> None:
    deployment = deploy("services: {web: {image: x, stack: shop, depends_on: [db]}, db: {image: y, stack: shop}}")
    assert deployment.stack == "shop"
    assert deployment.names == ["shop_web", "shop_db"]
    assert list(deployment.specs[0].depends_on) == ["shop_db"]


def test_a_stack_may_declare_its_default_network() -> None:
    deployment = deploy("stack: shop\nnetworks: {default: {internal: true}}\nservices: {web: {image: x}}")
    assert deployment.networks == [cpb.NetworkSpec(name="shop_default", internal=True)]


def test_files_are_read_relative_to_the_spec_files_folder(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pw.txt").write_bytes(b"s3cret\n")
    (tmp_path / "site.conf").write_text("server {}")
    spec_file = tmp_path / "app.yaml"
    spec_file.write_text(
        "stack: shop\n"
        "secrets: {pw: {file: secrets/pw.txt}}\n"
        "configs: {site: {file: ./site.conf}}\n"
        "services: {web: {image: x, secrets: [pw], configs: [site]}}\n"
    )
    deployment = load_deployment_file(spec_file)
    assert deployment.secrets == [cpb.FileSpec(name="shop_pw", data=b"s3cret\n")]
    assert deployment.configs == [cpb.FileSpec(name="shop_site", data=b"server {}")]
    (tmp_path / "secrets" / "pw.txt").unlink()
    with pytest.raises(SpecError) as caught:
        load_deployment_file(spec_file)
    assert caught.value.errors == [
        'secrets.pw.file: cannot read "secrets/pw.txt": No such file or directory; give a readable file '
        "(a relative path starts at the spec file's folder)"
    ]


def test_load_spec_checks_the_extras_but_returns_the_specs() -> None:
    with pytest.raises(SpecError, match=r"secrets\.pw: needs file"):
        load_deployment("secrets: {pw: {}}\nservices: {web: {image: x}}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data:/x", ("volume", "data", "/x", False)),
        ("data:/x:ro", ("volume", "data", "/x", True)),
        ("data:/x:rw", ("volume", "data", "/x", False)),
        ("/srv:/x:ro", ("bind", "/srv", "/x", True)),
        ("./srv:/x", ("bind", "./srv", "/x", False)),
        ("~/srv:/x", ("bind", "~/srv", "/x", False)),
        ("a:/x:rw,ro", ("volume", "a", "/x", True)),
    ],
)
def test_parse_mount_reads_composes_short_syntax(text: str, expected: tuple[str, str, str, bool]) -> None:
    assert parse_mount(text) == expected


def spec(**fields: Any) -> pb.ServiceSpec:
    """A valid spec `web` with `fields`."""
    return pb.ServiceSpec(name=fields.pop("name", "web"), image="x", replicas=1, **fields)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        pytest.param(
            spec(name="web", stack="shop"),
            [
                'services.web: a service of stack "shop" is named "shop_<service>", got "web"; name it "shop_web" or '
                "change its stack"
            ],
            id="stack-name",
        ),
        pytest.param(
            spec(name="shop_Web", stack="shop"),
            [
                'services.shop_Web: service name must be 1 to 63 lowercase letters, digits or "-", starting and ending '
                'with a letter or digit, got "Web"'
            ],
            id="stack-short-name",
        ),
        pytest.param(
            spec(name="Shop_web", stack="Shop"),
            [
                'services.Shop_web: service name must be 1 to 63 lowercase letters, digits or "-", starting and ending '
                'with a letter or digit, got "Shop_web"',
                'services.Shop_web.stack: stack name must be lowercase letters, digits, "_" or "-", starting with a '
                'letter or digit, got "Shop"; did you mean "shop"?',
            ],
            id="stack-invalid",
        ),
        pytest.param(spec(name="shop_web", stack="shop", depends_on={"shop_db": pb.Dependency()}), [], id="stack-ok"),
        pytest.param(
            spec(depends_on={"shop_": pb.Dependency()}),
            [
                "services.web.depends_on.shop_: must name a service: 1 to 63 lowercase letters, digits or "
                '"-", starting '
                'and ending with a letter or digit (a stack\'s: `<stack>_<service>`), got "shop_"'
            ],
            id="depends-on-stack-name",
        ),
        pytest.param(
            spec(mounts=[pb.Mount(type=pb.Mount.Type.ValueType(7), source="a", target="/x")]),
            ["services.web.mounts[0].type: must be volume, bind or tmpfs, got 7"],
            id="mount-type",
        ),
        pytest.param(
            spec(mounts=[pb.Mount(target="/x")]),
            [
                "services.web.mounts[0].source: is required for a volume: name the volume, like "
                '"db-data:/var/lib/postgresql/data"'
            ],
            id="mount-unspecified-is-volume",
        ),
        pytest.param(
            spec(mounts=[pb.Mount(type=pb.Mount.TYPE_TMPFS, target="/x", tmpfs_size_bytes=-1)]),
            ["services.web.mounts[0].tmpfs.size: must not be negative, got -1"],
            id="tmpfs-negative",
        ),
        pytest.param(
            spec(mounts=[pb.Mount(type=pb.Mount.TYPE_BIND, source="/srv", target="/x\0")]),
            ['services.web.mounts[0].target: must not contain control characters, got "/x\\u0000"; remove them'],
            id="target-control",
        ),
        pytest.param(
            spec(mounts=[pb.Mount(type=pb.Mount.TYPE_BIND, source="/srv", target="/" + "x" * 4095)]),
            ["services.web.mounts[0].target: must be at most 4095 bytes long, got 4096 bytes; use a shorter path"],
            id="target-long",
        ),
        pytest.param(
            spec(secrets=[pb.FileRef(name="pw", target="/x")], configs=[pb.FileRef(name="cfg", target="/x")]),
            ['services.web.configs[0].target: "/x" is already the target of secrets[0]; give each its own path'],
            id="secret-config-target",
        ),
        pytest.param(
            spec(secrets=[pb.FileRef(name="")], configs=[pb.FileRef(name="cfg", mode=0o1777)]),
            [
                "services.web.secrets[0].source: is required: name the secret",
                "services.web.configs[0].mode: must be permission bits from 0 to 0777, got 01777; write it in octal "
                "with a leading 0, as 0440",
            ],
            id="file-refs",
        ),
        pytest.param(
            pb.ServiceSpec(
                name="web",
                image="x",
                mode=pb.SERVICE_MODE_GLOBAL,
                mounts=[
                    pb.Mount(type=pb.Mount.TYPE_BIND, source="/srv", target="/srv"),
                    pb.Mount(type=pb.Mount.TYPE_TMPFS, target="/tmp"),
                    pb.Mount(type=pb.Mount.TYPE_VOLUME, source="data", target="/data"),
                ],
            ),
            [
                "services.web.mounts[2].source: a global service runs a task on every node, but a named volume lives "
                "on one node; use a bind or tmpfs mount, or mode: replicated"
            ],
            id="global-named-volume",
        ),
        pytest.param(spec(hostname="Web.example"), [], id="hostname-upper"),
        pytest.param(
            spec(hostname="x" * 64),
            [
                'services.web.hostname: must be a host name of at most 63 letters, digits, "-" and ".", each part '
                f'starting and ending with a letter or digit, like "db-1", got "{"x" * 57}..."'
            ],
            id="hostname-long",
        ),
        pytest.param(
            spec(entrypoint=["a\0"]),
            ["services.web.entrypoint[0]: must not contain NUL characters"],
            id="entrypoint-nul",
        ),
    ],
)
def test_validate_service_checks_the_new_fields(given: pb.ServiceSpec, expected: list[str]) -> None:
    assert validate_service(given) == expected


def test_the_writer_writes_the_new_fields_as_a_file_would() -> None:
    deployment = deploy(SHOP)
    web, db, _ = deployment.specs
    assert document_name(web) == "web"
    assert spec_to_document(web) == {
        "image": "nginx:1.27",
        "entrypoint": ["/docker-entrypoint.sh", "nginx"],
        "hostname": "web-1",
        "mounts": [
            "/srv/www:/usr/share/nginx/html:ro",
            {"type": "tmpfs", "target": "/cache", "tmpfs": {"size": "64MiB"}},
        ],
        "networks": ["shop_front", "public", "edge-net", "shop_default"],
        "configs": [
            {"source": "shop_nginx", "target": "/nginx"},
            {"source": "shop_nginx", "target": "/etc/nginx/nginx.conf", "mode": "0440"},
        ],
        "depends_on": ["db"],
        "stack": "shop",
    }
    assert spec_to_document(db)["mounts"] == [
        {
            "type": "volume",
            "source": "shop_db-data",
            "target": "/var/lib/postgresql/data",
            "labels": {"backup": "daily"},
        },
        "old:/old",
        "other:/other",
    ]
    # What the writer wrote reads back as the same specs.
    text = yaml.safe_dump(
        {"services": {document_name(s): spec_to_document(s) for s in deployment.specs}}, sort_keys=False
    )
    assert load_deployment(text).specs == deployment.specs


def test_the_new_fields_roll_tasks_and_the_stack_does_not() -> None:
    before = deploy(SHOP).specs[1]

    def read_only(s: pb.ServiceSpec) -> None:
        s.mounts[0].read_only = True

    def hostname(s: pb.ServiceSpec) -> None:
        s.hostname = "db-1"

    changes: list[Callable[[pb.ServiceSpec], object]] = [
        read_only,
        lambda s: s.networks.append("shop_front"),
        lambda s: s.secrets.pop(),
        lambda s: s.configs.add(name="cfg"),
        lambda s: s.entrypoint.append("sh"),
        hostname,
    ]
    for change in changes:
        after = pb.ServiceSpec()
        after.CopyFrom(before)
        change(after)
        assert not same_task_spec(before, after)
        assert spec_changes(before, after) != []
    plain = spec(name="shop_web")
    stacked = spec(name="shop_web", stack="shop")
    assert same_task_spec(plain, stacked)
    assert [(c.path, c.old_value, c.new_value) for c in spec_changes(plain, stacked)] == [
        ("networks", '["dockyard"]', '["shop_default"]'),
        ("stack", "", "shop"),
    ]


def test_diff_shows_each_mount_and_file_in_effect() -> None:
    before = spec(
        mounts=[pb.Mount(type=pb.Mount.TYPE_VOLUME, source="data", target="/x")], secrets=[pb.FileRef(name="pw")]
    )
    after = spec(
        mounts=[pb.Mount(source="data", target="/y", read_only=True, volume_labels={"a": "b"})],
        secrets=[pb.FileRef(name="pw", target="/run/secrets/pw", mode=0o400)],
    )
    assert [(c.path, c.old_value, c.new_value) for c in spec_changes(before, after)] == [
        ("mounts[0].target", "/x", "/y"),
        ("mounts[0].read_only", "false", "true"),
        ("mounts[0].labels.a", "", "b"),
        ("secrets[0].mode", "0444", "0400"),
    ]
