"""The corpus of realistic Compose files (examples/compose/*/compose.yaml): each reads into a valid request, or
fails listing exactly its unsupported keys, never with anything but SpecError."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.spec import stacks, validation
from dockyard.spec.compose import ComposeFile, load_compose_file
from dockyard.spec.issues import SpecError
from dockyard.v1 import types_pb2 as pb

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "compose"
FILES = sorted(CORPUS.glob("*/compose.yaml"))
# The folder's list of the unsupported keys its file holds: that file must fail listing exactly these.
EXPECTED_UNSUPPORTED = "expected-unsupported.txt"
# What the corpus files read from the environment (dotenv also has its .env; env-files a bare REGION).
ENVIRON = {"REGION": "eu-west-1"}


def _load(path: Path, *, ignore_unsupported: bool = False) -> ComposeFile:
    return load_compose_file(path, environ=ENVIRON, ignore_unsupported=ignore_unsupported)


def _unsupported_paths(error: SpecError) -> list[str]:
    return sorted(line.split(": not supported by Dockyard", 1)[0] for line in error.errors)


def test_the_corpus_is_varied() -> None:
    assert len(FILES) >= 10
    assert any((path.parent / EXPECTED_UNSUPPORTED).exists() for path in FILES)


def _assert_valid_request(loaded: ComposeFile, folder: str) -> None:
    """The request the file reads into passes the spec's own checks, and every reference in it is satisfied."""
    deployment = loaded.deployment
    assert deployment.specs
    assert deployment.stack == stacks.normalize_stack(folder) or folder == "dotenv"
    assert stacks.stack_problem(deployment.stack) is None
    names = set(deployment.names)
    assert len(names) == len(deployment.specs)
    problems = [str(issue) for spec in deployment.specs for issue in validation.service_issues(spec)]
    problems += [str(issue) for issue in validation.depends_on_issues(deployment.specs)]
    assert problems == []
    declared_networks = {network.name for network in deployment.networks}
    declared_volumes = {volume.name for volume in deployment.volumes}
    declared_secrets = {secret.name for secret in deployment.secrets}
    declared_configs = {config.name for config in deployment.configs}
    for objects in (deployment.networks, deployment.volumes, deployment.secrets, deployment.configs):
        for item in objects:
            assert stacks.object_name_problem(item.name) is None
            assert stacks.belongs(deployment.stack, item.name)
    for spec in deployment.specs:
        assert spec.stack == deployment.stack
        assert stacks.belongs(spec.stack, spec.name)
        assert set(spec.depends_on) <= names
        for network in stacks.networks_of(spec):
            assert network in declared_networks
        for mount in spec.mounts:
            if mount.type == pb.Mount.TYPE_VOLUME:
                assert mount.source in declared_volumes
            elif mount.type == pb.Mount.TYPE_BIND:
                assert mount.source.startswith("/")
        # A secret not declared by the file is an external one, named as it is, unscoped.
        for ref in spec.secrets:
            assert ref.name in declared_secrets or not stacks.belongs(spec.stack, ref.name)
        for ref in spec.configs:
            assert ref.name in declared_configs
    for secret in deployment.secrets:
        assert secret.data
    for config in deployment.configs:
        assert config.data


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.parent.name)
def test_corpus_file(path: Path) -> None:
    expected = path.parent / EXPECTED_UNSUPPORTED
    if not expected.exists():
        _assert_valid_request(_load(path), path.parent.name)
        return
    wanted = sorted(line.strip() for line in expected.read_text().splitlines() if line.strip())
    with pytest.raises(SpecError) as caught:
        _load(path)
    assert _unsupported_paths(caught.value) == wanted
    for line in caught.value.errors:
        assert "--ignore-unsupported" in line
    # Ignored, the same keys come back as warnings, and what is left is a valid request.
    loaded = _load(path, ignore_unsupported=True)
    assert sorted(line.split(": not supported by Dockyard", 1)[0] for line in loaded.warnings) == wanted
    _assert_valid_request(loaded, path.parent.name)
