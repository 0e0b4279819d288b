"""The modules under mutation: the files where a fault loses or forges data, and for each the
test files that may kill its mutants (mutmut then runs, per mutant, only those of them that
reached the mutated function in its stats run)."""

from __future__ import annotations

from dataclasses import dataclass

GW_UNITS = ["tests/test_gw_units.py", "tests/test_gw_promises.py", "tests/test_gw_robustness.py"]
GW_E2E = ["tests/test_gw_pipeline.py", "tests/test_gw_mqtt311.py"]
OUTBOX = ("tests/test_gw_outbox_parts.py", "tests/test_gw_outbox_api.py", "tests/test_gw_outbox_salvage.py",
          "tests/test_gw_outbox_review.py")
FW = ["tests/test_fw_node.py", "tests/test_fw_serial.py", "tests/test_fw_resets.py", "tests/test_fw_promises.py"]


@dataclass(frozen=True)
class Module:
    name: str
    paths: tuple[str, ...]  # files to mutate, repo-relative (firmware: firmware/lib/...)
    tests: tuple[str, ...]
    review: tuple[str, ...] = ()  # the files the survivors' review adds to (--retest runs these)
    # The mutants equivalent by the FrameError-detail rule are not run (tests/support/
    # mutate_order.py): only where no test reads the detail. verify's log tests do, and kill them.
    skip_by_rule: bool = False


MODULES = [
    # The outbox at its own API on real files; not test_gw_promises.py nor test_gw_units.py
    # (brokers and whole gateways, seconds a mutant, for what these reach directly), nor
    # test_gw_powercut.py (gcc and LD_PRELOAD power cuts, 17 s a run).
    Module("outbox", ("gateway/outbox/*.py",), (*OUTBOX, "tests/test_gw_outbox.py", "tests/test_gw_durable.py"),
           OUTBOX),
    # Not tests/test_gw_powercut.py: 17 s a run (gcc, LD_PRELOAD power cuts) for what
    # test_gw_durable.py already reaches (stage, _recover_staged) in 1.5 s.
    Module("batcher", ("gateway/batcher.py", "gateway/dedup.py"),
           ("tests/test_gw_batcher.py", "tests/test_gw_durable.py", "tests/test_gw_batcher_timer.py", *GW_UNITS),
           ("tests/test_gw_batcher.py", "tests/test_gw_durable.py", "tests/test_gw_batcher_timer.py")),
    # Not the gateway's end-to-end tests (a full gateway and mosquitto a test, 4-10 s a mutant
    # under load, 402 mutants): the publisher and the pump at their own API, against mosquitto
    # and a broker that fails on cue (tests/support/mqttfake.py).
    Module("publisher", ("gateway/publisher.py", "gateway/pump.py"),
           ("tests/test_gw_pump.py", "tests/test_gw_publisher.py"),
           ("tests/test_gw_pump.py", "tests/test_gw_publisher.py")),
    Module("verify", ("gateway/verify.py",), ("tests/test_gw_verify.py", *GW_UNITS),
           ("tests/test_gw_verify.py", "tests/test_gw_promises.py")),
    Module("replay", ("gateway/replay.py",), (*GW_UNITS, "tests/test_gw_perf_invariants.py"),
           ("tests/test_gw_promises.py",)),
    Module("us_store", ("firmware/lib/us_store.py",), (*FW, "tests/test_fw_config_cache.py", "tests/test_fw_wake.py"),
           ("tests/test_fw_promises.py",)),
    # Not the gateway's end-to-end tests: a mutant of the MIC or the cipher makes every frame
    # fail, and those tests then wait out their timeouts (3 min a mutant under load).
    Module("protocol", ("urbansense/wire/protocol.py", "urbansense/wire/body.py"),
           ("tests/test_protocol.py", "tests/test_wire_body.py", "tests/test_gw_units.py"),
           ("tests/test_protocol.py", "tests/test_wire_body.py", "tests/test_gw_units.py"), skip_by_rule=True),
    Module("framing", ("urbansense/wire/framing.py",), ("tests/test_protocol.py", *GW_UNITS),
           ("tests/test_gw_promises.py", "tests/test_protocol.py", "tests/test_gw_units.py"), skip_by_rule=True),
    Module("us_proto", ("firmware/lib/us_proto.py",), ("tests/test_protocol.py", *FW)),
    Module("us_serial", ("firmware/lib/us_serial.py",), ("tests/test_protocol.py", "tests/test_gw_robustness.py", *FW)),
    Module("us_water", ("firmware/lib/us_water.py",), ("tests/test_fw_logic.py", *FW, "tests/test_fw_wake.py",
                                                       "tests/test_fw_water.py"), ("tests/test_fw_water.py",)),
    # Not test_fw_config_cache.py: it reads the firmware's source for the board keys it uses,
    # and a mutated file holds every mutant's copy of them.
    Module("us_parking", ("firmware/lib/us_parking.py",), ("tests/test_fw_logic.py", *FW, "tests/test_fw_wake.py",
                                                           "tests/test_fw_drivers.py", "tests/test_fw_parking.py"),
           ("tests/test_fw_parking.py",)),
    # The deep-sleep wake pins (which may be armed, the stuck-pin guard, what woke us).
    Module("us_wake", ("firmware/lib/us_wake.py",), (*FW, "tests/test_fw_wake.py", "tests/test_fw_water.py",
                                                     "tests/test_fw_parking.py", "tests/test_fw_wake_plan.py"),
           ("tests/test_fw_wake_plan.py",)),
    Module("demo", ("urbansense/demo.py",), ("tests/test_demo_verdict.py",), ("tests/test_demo_verdict.py",)),
    # The simulator's books: what each frame became (sent, heard, lost on air, lost at the
    # gateway boundary, serial unacked) and the summary's counts. Only the tests that check
    # them: the runs elsewhere (test_sim_run, test_sim_cli) reach the same functions, cost
    # seconds a mutant, and check determinism, the world or energy.
    Module("sim_accounting", ("simulator/ledger.py", "simulator/summary.py"),
           ("tests/test_sim_accounting.py", "tests/test_sim_truth.py", "tests/test_sim_serial.py",
            "tests/test_demo_verdict.py"),
           ("tests/test_sim_accounting.py",)),
]
BY_NAME = {m.name: m for m in MODULES}

# Functions of a listed file that are not the module's concern (I/O around the accounting):
# their mutants are left out of the kill rate (mutmut still makes them: it mutates whole files).
SKIP_FUNCTIONS = {
    # the summary's energy, battery life, world and assumptions; the truth file's opening
    "sim_accounting": ("build_summary", "_pct", "_truth_at", "open_truth", "close"),
}
