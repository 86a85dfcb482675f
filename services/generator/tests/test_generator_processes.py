"""Real `imagegen generator` processes on a real nats-server: replicas share the work queue, a
killed replica's job is finished by another, SIGTERM drains or hands back jobs and exits 0."""

from __future__ import annotations

import signal
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegen.jobs.v1 import jobs_pb2
from imagegen_testing import eventually
from imagegen_testing.fake_replicate import FakeBehaviour, FakeReplicate
from imagegen_testing.jobs import Bus, make_job
from imagegen_testing.nats_server import NatsServer
from imagegen_testing.net import free_port
from imagegen_testing.processes import ServiceProcess, http_ok

pytestmark = pytest.mark.slow


class Replicas:
    """Starts generator replicas and stops every one of them at the end of the test."""

    def __init__(self, nats_url: str, log_dir: Path) -> None:
        self.nats_url = nats_url
        self.log_dir = log_dir
        self.started: list[tuple[ServiceProcess, int]] = []

    def start(self, name: str, **env: str) -> tuple[ServiceProcess, int]:
        port = free_port()
        process = ServiceProcess(
            name,
            ["generator"],
            {
                "IMAGEGEN_NATS_URL": self.nats_url,
                "IMAGEGEN_GENERATOR_OPS_LISTEN": f"127.0.0.1:{port}",
                "IMAGEGEN_PUBLIC_BASE_URL": "http://images.imagegen.test",
                "IMAGEGEN_GENERATOR_FETCH_TIMEOUT_SECONDS": "0.5",
                "IMAGEGEN_PROVIDER": "local",
                **env,
            },
            self.log_dir,
        )
        self.started.append((process, port))
        process.start().wait_ready(http_ok(f"http://127.0.0.1:{port}/readyz"))
        return process, port

    def stop_all(self) -> None:
        for process, _ in self.started:
            process.stop()


@pytest.fixture
def replicas(nats_server: NatsServer, tmp_path: Path) -> Iterator[Replicas]:
    started = Replicas(nats_server.url, tmp_path / "logs")
    yield started
    started.stop_all()


METRICS = (
    "imagegen_generator_jobs_total",
    "imagegen_generator_provider_duration_seconds",
    "imagegen_generator_queue_wait_seconds",
    "imagegen_generator_jobs_in_flight",
    "imagegen_generator_redeliveries_total",
    "imagegen_generator_provider_retries_total",
    "imagegen_generator_consumer_pending_messages",
)


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def jobs_done(port: int) -> float:
    text = metrics_text(port)
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("imagegen_generator_jobs_total{")
    )


async def test_three_replicas_share_sixty_jobs_each_done_exactly_once(replicas: Replicas, bus: Bus) -> None:
    ports = [replicas.start(f"generator-{n}")[1] for n in range(3)]
    jobs = [make_job("flux-schnell", 512, 512, prompt=f"job {n}") for n in range(60)]
    for job in jobs:
        await bus.submit(job)
    for job in jobs:
        outcome = await bus.replies.outcome(job.job_id, timeout=120)
        assert outcome.WhichOneof("result") == "image", outcome

    events = await bus.outcome_events()
    assert Counter(e.job_id for e in events) == Counter(job.job_id for job in jobs)
    started = await bus.started_events()
    assert sorted((s.job_id, s.attempt) for s in started) == sorted((job.job_id, 1) for job in jobs)
    assert all(len(bus.replies.outcomes(job.job_id)) == 1 for job in jobs)
    per_replica = [jobs_done(port) for port in ports]
    assert sum(per_replica) == 60
    assert all(done > 0 for done in per_replica), per_replica
    exposed = metrics_text(ports[0])
    for name in METRICS:
        assert f"\n{name}" in exposed, name
    assert 'imagegen_generator_jobs_total{model="flux-schnell",outcome="succeeded"}' in exposed


async def test_a_job_of_a_killed_replica_is_completed_by_another(
    replicas: Replicas, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    env = fake_replicate.generator_env(IMAGEGEN_GENERATOR_ACK_WAIT_SECONDS="2")
    fake_replicate.behaviour.hold = True  # the first replica's prediction never finishes
    first, _ = replicas.start("generator-a", **env)
    job = make_job("flux-schnell", 640, 640)
    await bus.submit(job)
    await eventually(lambda: len(fake_replicate.creates) == 1, what="the first prediction")
    first.kill()  # SIGKILL mid-job: no nak, no outcome

    fake_replicate.behaviour = FakeBehaviour()
    replicas.start("generator-b", **env)
    outcome = await bus.replies.outcome(job.job_id, timeout=60)
    assert outcome.WhichOneof("result") == "image", outcome
    assert outcome.attempt == 2
    events = await bus.outcome_events()
    assert [(e.job_id, e.WhichOneof("result")) for e in events] == [(job.job_id, "image")]
    assert [s.attempt for s in await bus.started_events()] == [1, 2]


async def test_sigterm_finishes_jobs_in_flight_and_exits_0(
    replicas: Replicas, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.behaviour.delay_seconds = 2.0
    replica, _ = replicas.start("generator", **fake_replicate.generator_env())
    jobs = [make_job() for _ in range(2)]
    for job in jobs:
        await bus.submit(job)
    await eventually(lambda: len(fake_replicate.creates) == 2, what="both predictions")
    replica.send_signal(signal.SIGTERM)
    assert replica.wait(timeout=30) == 0, replica.logs()[-3000:]  # one signal: it ends by itself
    for job in jobs:
        outcome = await bus.replies.outcome(job.job_id, timeout=5)
        assert (outcome.WhichOneof("result"), outcome.attempt) == ("image", 1)


async def test_sigterm_hands_back_jobs_not_finished_within_the_drain_timeout(
    replicas: Replicas, bus: Bus, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.behaviour.hold = True
    env = fake_replicate.generator_env(IMAGEGEN_GENERATOR_DRAIN_TIMEOUT_SECONDS="0.5")
    replica, _ = replicas.start("generator-a", **env)
    job = make_job()
    await bus.submit(job)
    await eventually(lambda: len(fake_replicate.creates) == 1, what="the prediction")
    replica.send_signal(signal.SIGTERM)
    assert replica.wait(timeout=30) == 0, replica.logs()[-3000:]  # one signal: it ends by itself
    assert len(fake_replicate.cancels) == 1  # its prediction was cancelled upstream
    assert bus.replies.outcomes(job.job_id) == []

    fake_replicate.behaviour = FakeBehaviour()
    replicas.start("generator-b", **env)
    outcome = await bus.replies.outcome(job.job_id, timeout=60)
    assert (outcome.WhichOneof("result"), outcome.attempt) == ("image", 2)
    assert jobs_pb2.JobOutcome in {type(e) for e in await bus.outcome_events()}
