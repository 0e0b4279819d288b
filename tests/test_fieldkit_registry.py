"""``urbansense registry`` and the gateway picking registry changes up without a restart."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.metrics import Metrics
from gateway.registry import NodeSpec, load_registry, write_registry
from gateway.registry_watch import RegistryWatch
from tests.test_gw_support import KEYS, frame, make_config, wait_for
from urbansense.cli import main
from urbansense.fieldkit import FieldError
from urbansense.fieldkit.siteregistry import SiteRegistry, parse_node_id

ROOT = Path(__file__).resolve().parents[1]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_add_allocates_ids_writes_0600_and_never_prints_the_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = tmp_path / "site" / "nodes.jsonl"
    for i in range(3):
        rc, out, _ = cli(capsys, "registry", "add", "--registry", str(reg), "--kind", "parking", "--json")
        assert rc == 0 and json.loads(out)["node_id"] == i + 1
    assert stat.S_IMODE(reg.stat().st_mode) == 0o600
    keys = [r["key"] for r in SiteRegistry(reg).records()]
    assert len(set(keys)) == 3
    rc, out, _ = cli(capsys, "registry", "list", "--registry", str(reg))
    assert rc == 0 and "3 active, 0 revoked" in out
    rc, jout, _ = cli(capsys, "registry", "list", "--registry", str(reg), "--json")
    assert [n["node"] for n in json.loads(jout)["nodes"]] == ["00000001", "00000002", "00000003"]
    assert not any(k in out + jout for k in keys)
    assert len(load_registry(reg)) == 3  # the gateway reads what we wrote
    assert sorted(p.name for p in reg.parent.iterdir()) == ["nodes.jsonl", "nodes.jsonl.lock"]


def test_a_taken_or_revoked_id_is_refused_and_never_reused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = tmp_path / "nodes.jsonl"
    cli(capsys, "registry", "add", "--registry", str(reg), "--kind", "bin", "--node-id", "7")
    rc, _, err = cli(capsys, "registry", "add", "--registry", str(reg), "--kind", "bin", "--node-id", "7")
    assert rc == 2 and "already in use" in err and "next:" in err
    rc, out, _ = cli(capsys, "registry", "revoke", "--registry", str(reg), "--node", "00000007")
    assert rc == 0 and "revoked" in out
    rc, out, _ = cli(capsys, "registry", "revoke", "--registry", str(reg), "--node", "7")
    assert rc == 0 and "already revoked" in out
    rc, _, err = cli(capsys, "registry", "add", "--registry", str(reg), "--kind", "bin", "--node-id", "7")
    assert rc == 2 and "already revoked" in err
    rec, _ = SiteRegistry(reg).add("bin")
    assert rec["node_id"] == 8  # above every id ever listed
    rc, _, err = cli(capsys, "registry", "revoke", "--registry", str(reg), "--node", "99")
    assert rc == 2 and "registry list" in err
    reg_ = load_registry(reg)
    assert reg_.get(7) is None and reg_.is_revoked(7) and reg_.get(8) is not None


@pytest.mark.parametrize("text", ["abc", "-1", "4294967296"])
def test_a_bad_node_id_says_how_to_write_one(text: str) -> None:
    with pytest.raises(FieldError) as ei:
        parse_node_id(text)
    assert ei.value.exit_code == 2


def test_two_writers_never_interleave(tmp_path: Path) -> None:
    """Two processes adding 15 nodes each at once: 30 distinct ids, a file the gateway loads."""
    reg = tmp_path / "nodes.jsonl"
    code = ("import sys; from pathlib import Path; from urbansense.fieldkit.siteregistry import SiteRegistry\n"
            "r = SiteRegistry(Path(sys.argv[1]))\n"
            "for _ in range(15): r.add('water')\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(reg)], env=env) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    ids = [r["node_id"] for r in SiteRegistry(reg).records()]
    assert sorted(ids) == list(range(1, 31))
    assert len(load_registry(reg)) == 30


def test_a_held_lock_times_out_with_the_next_step(tmp_path: Path) -> None:
    reg = tmp_path / "nodes.jsonl"
    SiteRegistry(reg).add("bin")
    fd = os.open(str(reg) + ".lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(FieldError) as ei:
            SiteRegistry(reg, lock_timeout_s=0.2).add("bin")
        assert "being changed by another command" in ei.value.problem
        assert "run this one again" in ei.value.next_step
    finally:
        os.close(fd)
    assert len(SiteRegistry(reg).records()) == 1


def test_a_corrupt_registry_is_not_overwritten(tmp_path: Path) -> None:
    reg = tmp_path / "nodes.jsonl"
    reg.write_text('{"node_id": 1, "kind": "bin"\n')
    with pytest.raises(FieldError) as ei:
        SiteRegistry(reg).add("bin")
    assert "by hand" in ei.value.next_step
    assert reg.read_text() == '{"node_id": 1, "kind": "bin"\n'


# -- the gateway side --------------------------------------------------------------------

def test_the_watch_reloads_on_change_only_and_keeps_the_old_on_a_bad_file(tmp_path: Path) -> None:
    reg = tmp_path / "nodes.jsonl"
    write_registry(reg, [NodeSpec(1, "water", KEYS[1])])
    registry = load_registry(reg)
    m = Metrics()
    seen: list[tuple[list[int], list[int]]] = []
    w = RegistryWatch(reg, registry, m, lambda r, a, g: seen.append((a, g)))
    assert not w.poll()
    write_registry(reg, [NodeSpec(1, "water", KEYS[1]), NodeSpec(2, "bin", KEYS[2])])
    assert w.poll() and registry.get(2) is not None and seen == [([2], [])]
    assert not w.poll()
    reg.write_text("not json\n")
    assert not w.poll()
    assert registry.get(2) is not None and m.registry_reloads.get("failed") == 1
    assert "gateway.registry:1" in w.status()["last_error"]


async def test_a_running_gateway_picks_up_add_and_revoke_and_keeps_replay_state(
        tmp_path: Path, mqtt_broker: Any, running: Any) -> None:
    cfg = make_config(tmp_path, mqtt_broker, nodes=range(1, 2))
    gw = await running(cfg)
    m = gw.metrics
    gw.feed(frame(1, 5))
    gw.feed(frame(2, 1))
    await wait_for(lambda: m.rejections.get("unknown_node") == 1, what="node 2 unknown")
    site = SiteRegistry(cfg.registry)
    with site.locked() as recs:  # what `registry add` does, with a key we can sign with
        recs.append({"node_id": 2, "kind": "water", "key": KEYS[2].hex()})
    await wait_for(lambda: gw.registry.get(2) is not None, what="file-change reload")
    gw.feed(frame(2, 2))
    gw.feed(frame(1, 5))  # node 1's replay state survived the reload: a duplicate
    await wait_for(lambda: m.frames_accepted.total() == 2 and m.duplicates.total() == 1,
                   what="node 2 accepted, node 1 duplicate")
    assert any(n["node_id"] == 2 for n in gw.status()["nodes"])
    site.revoke(1)
    gw.reload()  # SIGHUP's path
    assert gw.registry.is_revoked(1)
    gw.feed(frame(1, 6))
    await wait_for(lambda: m.rejections.get("revoked_node") == 1, what="revoked_node counted")
    assert m.rejections.get("unknown_node") == 1
    assert gw.status()["registry"]["revoked"] == 1
    assert 'reason="revoked_node"' in m.render()


@pytest.mark.timeout(60)
def test_sighup_reloads_the_cli_gateway(tmp_path: Path, mqtt_broker: Any) -> None:
    cfg = make_config(tmp_path, mqtt_broker, nodes=range(1, 2))
    toml = tmp_path / "gateway.toml"
    toml.write_text(
        f'[gateway]\nsite = "s"\nid = "g"\nregistry = "{cfg.registry}"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[mqtt]\nbrokers = ["{mqtt_broker.host}:{mqtt_broker.port}"]\n[http]\nport = 0\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with subprocess.Popen([sys.executable, "-m", "urbansense", "gateway", "run", "--config", str(toml)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as p:
        try:
            assert p.stdout is not None
            for line in p.stdout:
                if "event=gateway_started" in line:
                    break
            p.send_signal(signal.SIGHUP)
            for line in p.stdout:
                if "event=registry_reloaded" in line:
                    assert "why=sighup" in line and "nodes=1" in line
                    break
            assert p.poll() is None  # SIGHUP's default action would have killed it
        finally:
            p.terminate()
            p.wait(timeout=20)
