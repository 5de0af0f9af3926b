"""History, rollback, rebalance, prune, if_state_revision and depends_on across the cluster, over real gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest

from controller.orchestrator import rollout
from controller.store.base import Put
from dockyard.v1 import controller_pb2 as cpb
from dockyard.v1 import controller_pb2_grpc as cpb_grpc
from dockyard.v1 import types_pb2 as pb
from tests.component.harness import ApiUnderTest

TIMEOUT = 10
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def spec(name: str = "web", image: str = "app:1", replicas: int = 1, **depends: int) -> pb.ServiceSpec:
    result = pb.ServiceSpec(name=name, image=image, replicas=replicas)
    for other, condition in depends.items():
        result.depends_on[other].condition = condition  # type: ignore[assignment]
    return result


@pytest.fixture
async def stub(api: ApiUnderTest) -> AsyncIterator[cpb_grpc.ControllerServiceStub]:
    async with api.channel() as channel:
        yield cpb_grpc.ControllerServiceStub(channel)


async def apply(
    stub: cpb_grpc.ControllerServiceStub, *specs: pb.ServiceSpec, **options: object
) -> cpb.ApplyServiceResponse:
    request = cpb.ApplyServiceRequest(services=specs, **options)  # type: ignore[arg-type]
    response: cpb.ApplyServiceResponse = await stub.ApplyService(request, timeout=TIMEOUT)
    return response


async def refused(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code, caught.value.details()
    return str(caught.value.details())


async def history(stub: cpb_grpc.ControllerServiceStub, name: str = "web") -> list[cpb.ServiceRevision]:
    response = await stub.ListServiceHistory(cpb.ListServiceHistoryRequest(service=name), timeout=TIMEOUT)
    return list(response.revisions)


async def test_history_lists_revisions_newest_first_with_their_cause(stub: cpb_grpc.ControllerServiceStub) -> None:
    await apply(stub, spec(image="app:1"))
    await stub.ScaleService(cpb.ScaleServiceRequest(name="web", replicas=3), timeout=TIMEOUT)
    await apply(stub, spec(image="app:2", replicas=3))

    revisions = await history(stub)

    assert [(r.revision, r.spec_revision, r.change_cause, r.current) for r in revisions] == [
        (3, 3, "apply", True),
        (2, 1, "scale to 3", False),
        (1, 1, "apply", False),
    ]
    assert [r.spec.image for r in revisions] == ["app:2", "app:1", "app:1"]
    assert all(r.HasField("created_at") for r in revisions)
    error = await refused(
        stub.ListServiceHistory(cpb.ListServiceHistoryRequest(service="nope")), grpc.StatusCode.NOT_FOUND
    )
    assert error == "service: service 'nope' not found"


async def test_rollback_returns_to_the_revision_before_the_current_spec(stub: cpb_grpc.ControllerServiceStub) -> None:
    await apply(stub, spec(image="app:1"))
    await stub.ScaleService(cpb.ScaleServiceRequest(name="web", replicas=2), timeout=TIMEOUT)
    await apply(stub, spec(image="app:2", replicas=2))

    rolled = await stub.RollbackService(cpb.RollbackServiceRequest(service="web"), timeout=TIMEOUT)

    assert (rolled.revision, rolled.spec_revision, rolled.spec.image) == (4, 4, "app:1")
    assert rolled.change_cause == "rollback to revision 2 (requested)"
    # Tasks of revisions 1 and 2 ran app:1: they run the current spec again, and stay.
    assert (rolled.also_current_from, rolled.also_current_to) == (1, 2)
    assert rolled.update_status.state == pb.UpdateStatus.STATE_ROLLBACK_STARTED
    assert (rolled.update_status.from_revision, rolled.update_status.to_revision) == (3, 4)
    assert (await history(stub))[0].change_cause == "rollback to revision 2 (requested)"
    # Applying a new spec ends the range the rollback returned to.
    updated = (await apply(stub, spec(image="app:3", replicas=2))).results[0].service
    assert (updated.also_current_from, updated.also_current_to) == (0, 0)


async def test_rollback_to_a_named_revision_and_its_refusals(stub: cpb_grpc.ControllerServiceStub) -> None:
    await apply(stub, spec(image="app:1"))
    await apply(stub, spec(image="app:2"))
    await apply(stub, spec(image="app:3"))

    rolled = await stub.RollbackService(cpb.RollbackServiceRequest(service="web", to_revision=1), timeout=TIMEOUT)
    assert (rolled.revision, rolled.spec.image, rolled.change_cause) == (
        4,
        "app:1",
        "rollback to revision 1 (requested)",
    )

    error = await refused(
        stub.RollbackService(cpb.RollbackServiceRequest(service="web", to_revision=9)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error == (
        "to_revision: revision 9 of 'web' is not kept (kept: 1, 2, 3, 4); "
        "give one of those (see `dockyard history web`)"
    )
    error = await refused(
        stub.RollbackService(cpb.RollbackServiceRequest(service="web", to_revision=1)), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert error.startswith("to_revision: revision 1 of 'web' has the current spec (apart from replicas, update,")
    error = await refused(
        stub.RollbackService(cpb.RollbackServiceRequest(service="web", if_revision=3)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error == "services.web: revision is 4, not 3 as expected; read it again and retry"


async def test_a_service_with_one_spec_has_nothing_to_roll_back_to(stub: cpb_grpc.ControllerServiceStub) -> None:
    await apply(stub, spec())
    await stub.ScaleService(cpb.ScaleServiceRequest(name="web", replicas=2), timeout=TIMEOUT)
    error = await refused(
        stub.RollbackService(cpb.RollbackServiceRequest(service="web")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert error == (
        "service: 'web' keeps no revision before its current spec (revision 1; kept: 1, 2); "
        "there is nothing to roll back to"
    )


async def test_rebalance_bumps_the_generation_without_a_new_revision(stub: cpb_grpc.ControllerServiceStub) -> None:
    await apply(stub, spec())
    bumped = await stub.RebalanceService(cpb.RebalanceServiceRequest(service="web"), timeout=TIMEOUT)
    again = await stub.RebalanceService(cpb.RebalanceServiceRequest(service="web"), timeout=TIMEOUT)
    assert (bumped.rebalance_generation, again.rebalance_generation, again.revision) == (1, 2, 1)
    assert [r.revision for r in await history(stub)] == [1]

    everywhere = spec("agent", replicas=0)
    everywhere.mode = pb.SERVICE_MODE_GLOBAL
    once = spec("migrate")
    once.mode = pb.SERVICE_MODE_JOB
    await apply(stub, everywhere, once)
    error = await refused(
        stub.RebalanceService(cpb.RebalanceServiceRequest(service="agent")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert error == "service: 'agent' is a global service (one task per eligible node); it has nothing to rebalance"
    error = await refused(
        stub.RebalanceService(cpb.RebalanceServiceRequest(service="migrate")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert error.startswith("service: 'migrate' is a job")


async def test_prune_deletes_the_services_not_in_the_request(stub: cpb_grpc.ControllerServiceStub) -> None:
    await apply(stub, spec("web"), spec("db"), spec("cache"))
    response = await apply(stub, spec("web", image="app:2"), prune=True)
    listed = await stub.ListServices(cpb.ListServicesRequest(), timeout=TIMEOUT)
    assert [s.name for s in listed.services] == ["web"]
    # The answer names what prune deleted, as it was last, after the services it applied.
    assert [(r.service.name, r.action) for r in response.results] == [
        ("web", cpb.ApplyResult.ACTION_UPDATED),
        ("cache", cpb.ApplyResult.ACTION_REMOVED),
        ("db", cpb.ApplyResult.ACTION_REMOVED),
    ]


async def test_if_state_revision_refuses_when_a_service_moved(
    stub: cpb_grpc.ControllerServiceStub, api: ApiUnderTest
) -> None:
    await apply(stub, spec("web"), spec("db"), spec("old"))
    planned = await stub.PlanApply(
        cpb.PlanApplyRequest(services=[spec("web", image="app:2"), spec("db")]), timeout=TIMEOUT
    )
    # Another service changing does not matter; one of the request, or one prune would delete, does.
    await apply(stub, spec("other"))
    request = [spec("web", image="app:2"), spec("db")]
    assert (await apply(stub, *request, if_state_revision=planned.state_revision)).results[0].service.revision == 2

    since = planned.state_revision + 2
    await stub.ScaleService(cpb.ScaleServiceRequest(name="db", replicas=2), timeout=TIMEOUT)
    await stub.DeleteService(cpb.DeleteServiceRequest(name="old"), timeout=TIMEOUT)
    error = await refused(
        apply(stub, spec("web", image="app:3"), spec("db"), spec("old"), if_state_revision=since),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert error.splitlines() == [
        f"services.db: changed at store revision {since + 1}, after {since} (planned); read it again and retry",
        f"services.old: deleted at store revision {since + 2}, after {since} (planned); read it again and retry",
    ]
    error = await refused(
        apply(stub, spec("web", image="app:3"), prune=True, if_state_revision=since),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "services.db: changed at store revision" in error  # prune would delete it
    error = await refused(apply(stub, spec("web"), if_state_revision=since + 99), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.startswith(f"if_state_revision: {since + 99} is beyond the controller's revision")
    assert [r.revision for r in await history(stub)] == [2, 1]


async def test_depends_on_is_checked_across_the_cluster(stub: cpb_grpc.ControllerServiceStub) -> None:
    healthy = pb.Dependency.CONDITION_SERVICE_HEALTHY
    await apply(stub, spec("db"), spec("api", db=healthy))
    # A dependency stored in the cluster is fine; one that is neither there nor in the request is not.
    await apply(stub, spec("web", api=healthy))
    error = await refused(apply(stub, spec("web", cache=healthy)), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.startswith("services.web.depends_on.cache: names no service of this request or of the cluster")
    # A cycle through stored services (web -> api -> db) and one of the request (db -> web).
    error = await refused(apply(stub, spec("db", web=healthy)), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.startswith("services.db.depends_on: cycle db -> web -> api -> db;")
    # Pruning a service something still depends on leaves the dependency dangling.
    error = await refused(apply(stub, spec("web", api=healthy), prune=True), grpc.StatusCode.INVALID_ARGUMENT)
    assert error.startswith("services.web.depends_on.api: names no service")


async def test_applying_a_paused_rollouts_spec_again_resumes_it(
    stub: cpb_grpc.ControllerServiceStub, api: ApiUnderTest
) -> None:
    await apply(stub, spec(image="app:1"))
    await apply(stub, spec(image="app:2"))
    # The orchestrator paused the rollout (failure_action pause).
    service = await api.store.get_service("web")
    assert service is not None
    service.update_status.state = pb.UpdateStatus.STATE_PAUSED
    service.update_status.to_revision = 2
    service.update_status.message = "1 of 1 updated tasks failed"
    await api.store.commit([Put(service, expect_version=service.version)])

    result = (await apply(stub, spec(image="app:2"))).results[0]

    assert result.action == cpb.ApplyResult.ACTION_UNCHANGED
    assert (result.service.revision, result.service.update_status.state) == (2, pb.UpdateStatus.STATE_UPDATING)
    stored = await api.store.get_service("web")
    assert stored is not None
    assert (stored.revision, stored.update_status.state, stored.update_status.message) == (
        2,
        pb.UpdateStatus.STATE_UPDATING,
        "",
    )
    assert [r.revision for r in await history(stub)] == [2, 1], "a resume is no new revision"


async def test_rollback_after_an_automatic_rollback_paused_resumes_it_not_the_failed_spec(
    stub: cpb_grpc.ControllerServiceStub, api: ApiUnderTest
) -> None:
    await apply(stub, spec(image="app:1", replicas=3))
    await apply(stub, spec(image="app:bad", replicas=3))
    # The orchestrator rolled back from revision 2 (revision 3 runs app:1 again), and the rollback paused.
    service = await api.store.get_service("web")
    assert service is not None
    target = rollout.RollbackTarget(1, spec(image="app:1", replicas=3), 1, 1)
    rolled = rollout.rollback_service(service, target, NOW, "rollback to revision 1: 3 of 3 failed")
    rolled.update_status.state = pb.UpdateStatus.STATE_ROLLBACK_PAUSED
    await api.store.commit([Put(rolled, expect_version=service.version)])

    # `dockyard rollback` (as exit 4 advises) and `--to 1` go on with the rollback to app:1.
    for to_revision in (0, 1):
        resumed = await stub.RollbackService(
            cpb.RollbackServiceRequest(service="web", to_revision=to_revision), timeout=TIMEOUT
        )
        assert (resumed.revision, resumed.spec_revision, resumed.spec.image) == (3, 3, "app:1")
        assert resumed.update_status.state == pb.UpdateStatus.STATE_ROLLBACK_STARTED
        stored = await api.store.get_service("web")
        assert stored is not None
        assert (stored.revision, stored.update_status.state) == (3, pb.UpdateStatus.STATE_ROLLBACK_STARTED)
        stored.update_status.state = pb.UpdateStatus.STATE_ROLLBACK_PAUSED  # paused again, as the orchestrator might
        await api.store.commit([Put(stored, expect_version=stored.version)])
    assert [r.revision for r in await history(stub)] == [3, 2, 1], "a resume is no new revision"

    # Completed, `dockyard rollback` has nothing to do (it would be app:bad again); the failed spec by name only.
    done = await api.store.get_service("web")
    assert done is not None
    done.update_status.state = pb.UpdateStatus.STATE_ROLLBACK_COMPLETED
    await api.store.commit([Put(done, expect_version=done.version)])
    error = await refused(
        stub.RollbackService(cpb.RollbackServiceRequest(service="web")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert error == (
        "service: 'web' was rolled back from revision 2 and runs the spec of revision 1 already; "
        "give the revision to go to (see `dockyard history web`)"
    )
    again = await stub.RollbackService(cpb.RollbackServiceRequest(service="web", to_revision=2), timeout=TIMEOUT)
    assert (again.revision, again.spec.image) == (4, "app:bad")


async def test_a_change_of_update_settings_only_is_a_revision_without_a_rollout(
    stub: cpb_grpc.ControllerServiceStub, api: ApiUnderTest
) -> None:
    await apply(stub, spec(image="app:1", replicas=3))
    await apply(stub, spec(image="app:2", replicas=3))
    # The orchestrator paused the rollout of app:2; raising max_failure_ratio gets past it.
    service = await api.store.get_service("web")
    assert service is not None
    service.update_status.state = pb.UpdateStatus.STATE_PAUSED
    service.update_status.from_revision, service.update_status.to_revision = 1, 2
    await api.store.commit([Put(service, expect_version=service.version)])
    tuned = spec(image="app:2", replicas=3)
    tuned.update.max_failure_ratio = 0.5

    result = (await apply(stub, tuned)).results[0]

    assert result.action == cpb.ApplyResult.ACTION_UPDATED
    assert (result.service.revision, result.service.spec_revision) == (3, 2), "no new spec_revision: no rollout"
    assert result.service.update_status.state == pb.UpdateStatus.STATE_UPDATING, "the paused rollout goes on"
    assert result.service.update_status.to_revision == 2
    revisions = await history(stub)
    assert [(r.revision, r.spec_revision) for r in revisions] == [(3, 2), (2, 2), (1, 1)]
    past = await stub.GetService(cpb.GetServiceRequest(name="web", revision=2), timeout=TIMEOUT)
    assert past.spec_revision == 2
