"""What the agent asks Docker for, from a task and its spec."""

from __future__ import annotations

from agent.container_spec import DEFAULT_STOP_GRACE, stop_grace
from dockyard.spec import load_spec
from dockyard.v1 import types_pb2 as pb


def task_with(yaml_service: str) -> pb.Task:
    [spec] = load_spec(f"services: {{web: {{image: x, {yaml_service}}}}}")
    task = pb.Task(id="t1")
    task.spec.CopyFrom(spec)
    return task


def test_stop_grace_zero_means_kill_at_once_and_unset_means_the_default() -> None:
    assert stop_grace(task_with("stop_grace_period: 0s")) == 0.0
    assert stop_grace(task_with("stop_grace_period: 1500ms")) == 1.5
    assert stop_grace(task_with("replicas: 1")) == DEFAULT_STOP_GRACE
    assert stop_grace(pb.Task(id="bare")) == DEFAULT_STOP_GRACE
