"""Shared fixtures: the MicroPython VM (``mpvm``) and private Mosquitto brokers.

Missing tools fail the test (CI must run everything) unless URBANSENSE_ALLOW_SKIP=1, in
which case tests that need them are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Broker, BrokerUnavailable, TlsMaterial, make_tls_material
from tests.support.loopwatch import LoopWatch
from tests.support.mpvm import missing_reason, run_micropython

ALLOW_SKIP = os.environ.get("URBANSENSE_ALLOW_SKIP") == "1"

if os.environ.get("URBANSENSE_MUTATE") == "1":
    # tools/mutate.py: mutmut's trampolines and a loaded machine make an example slower than
    # hypothesis's 200 ms deadline; a deadline miss is not a kill (nor a failed clean run).
    # No shrinking: a mutant is killed by the first failing example, and shrinking it (and
    # explaining it) only costs time, up to mutmut's timeout (us_proto's encode_ack mutants
    # shrank for 6 s each before).
    from hypothesis import Phase, settings

    settings.register_profile("mutate", deadline=None,
                              phases=[p for p in Phase if p not in (Phase.shrink, Phase.explain)])
    settings.load_profile("mutate")

MQTT_USER = "urbansense"
MQTT_PASSWORD = "s3cret-test-pw"


def _unavailable(reason: str) -> None:
    if ALLOW_SKIP:
        pytest.skip(reason)
    pytest.fail(f"{reason} (set URBANSENSE_ALLOW_SKIP=1 to skip instead)", pytrace=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every async test of the gateway (tests/test_gw_*.py) runs under ``loop_watch``, first of
    its fixtures, so the other fixtures' set-up and teardown are watched too."""
    for item in items:
        if (item.path.name.startswith("test_gw_") and isinstance(item, pytest.Function)
                and inspect.iscoroutinefunction(item.obj) and "loop_watch" not in item.fixturenames):
            item.fixturenames.insert(0, "loop_watch")


@pytest.fixture
async def loop_watch() -> AsyncIterator[LoopWatch]:
    """Fails the test if its code blocked the event loop (tests/support/loopwatch.py): a
    blocking call or a long computation held the loop for over a second."""
    watch = LoopWatch(asyncio.get_running_loop())
    watch.start()
    yield watch
    watch.stop()
    if watch.blocks:
        pytest.fail(watch.report(), pytrace=False)


@pytest.fixture
def mpvm() -> Callable[..., Any]:
    """``run_micropython`` (see tests/support/mpvm.py), after checking node + the npm package."""
    reason = missing_reason()
    if reason is not None:
        _unavailable(f"MicroPython VM unavailable: {reason}")
    return run_micropython


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    """A throw-away CA + server certificate (CN/SAN 127.0.0.1, localhost), shared per session."""
    try:
        return make_tls_material(tmp_path_factory.mktemp("tls"))
    except BrokerUnavailable as e:
        _unavailable(str(e))
        raise


BrokerFactory = Callable[..., Broker]


@pytest.fixture
def mqtt_broker_factory(tmp_path: Path) -> Iterator[BrokerFactory]:
    """``make(tls=None, users=None, persistence=False, extra_config="", port=None) -> Broker``,
    started; every broker made is stopped at teardown."""
    made: list[Broker] = []

    def make(**kwargs: Any) -> Broker:
        try:
            broker = Broker(tmp_path / f"mosquitto-{len(made)}", **kwargs)
        except BrokerUnavailable as e:
            _unavailable(str(e))
            raise
        made.append(broker)
        return broker.start()

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture
def mqtt_broker(mqtt_broker_factory: BrokerFactory) -> Broker:
    """Plain MQTT on 127.0.0.1:<free port>, anonymous access."""
    return mqtt_broker_factory()


@pytest.fixture
def mqtt_broker_tls(mqtt_broker_factory: BrokerFactory, tls_material: TlsMaterial) -> Broker:
    """MQTT over TLS; ``.ca_path`` is the CA certificate to trust (server name 127.0.0.1/localhost)."""
    return mqtt_broker_factory(tls=tls_material)


@pytest.fixture
def mqtt_broker_auth(mqtt_broker_factory: BrokerFactory) -> Broker:
    """Plain MQTT, anonymous refused; ``.username`` / ``.password`` are valid credentials."""
    return mqtt_broker_factory(users={MQTT_USER: MQTT_PASSWORD})


@pytest.fixture
async def running() -> AsyncIterator[Callable[..., Any]]:
    """start(cfg or Gateway) -> the Gateway, running in a task; all stopped at teardown."""
    from gateway.app import Gateway

    gws: list[tuple[Gateway, asyncio.Task[None]]] = []

    async def start(what: Any) -> Gateway:
        gw = what if isinstance(what, Gateway) else Gateway(what)
        task = asyncio.create_task(gw.run())
        await asyncio.wait_for(gw.started.wait(), 10)
        gws.append((gw, task))
        return gw

    yield start
    for gw, task in gws:
        await asyncio.wait_for(gw.stop(), 10)
        await task


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[Any]:
    """A started 3-node JetStream cluster with MQTT listeners (urbansense.natscluster)."""
    from urbansense.natscluster import NatsCluster

    try:
        cluster = NatsCluster(tmp_path / "nats")
    except BrokerUnavailable as e:
        _unavailable(str(e))
        raise
    with cluster:
        yield cluster


@pytest.fixture
def pg_server() -> Iterator[Any]:
    """A started private PostgreSQL (urbansense.pgserver): ``.dsn``, ``stop()``, ``start()``."""
    from urbansense.pgserver import PgServer

    try:
        server = PgServer()
    except BrokerUnavailable as e:
        _unavailable(str(e))
        raise
    with server:
        yield server
