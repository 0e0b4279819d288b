"""``urbansense node provision``: a board with MicroPython -> a registered node.

Steps (each error a FieldError with the next step):
1. Check the board definition and build the config with the firmware's own checks
   (nodeconfig): a config the node would answer with SAFE MODE never leaves the laptop.
2. Connect over the raw REPL (boardlink). Read the board's config.json: a board that is
   already a node of this registry keeps its identity (id and key), so a re-run after a
   pulled cable, or a re-provision after a firmware change, never takes a second id.
3. Otherwise allocate the id and generate the key in the site registry (siteregistry: under
   its lock, written 0600; the running gateway picks the node up without a restart).
4. Copy config.json, board.json, the firmware compiled by mpy-cross for the chip, boot.py and
   main.py: only files whose SHA-256 differs, each verified after the copy; stale firmware
   modules removed. A board whose image freezes the firmware (build.py) gets no lib/ at all,
   once the image's source stamp matches this tree's firmware/lib (checked before step 3, so
   a mismatched image takes no id).
5. Soft reset (raw REPL: boot.py runs, main.py does not, so the board does not go to sleep
   under us) and run the self-check on the board: the firmware's modules load from the
   copied .mpy files and accept the copied config and board files. It also reads what the
   board's boot banner says (MicroPython version and build, the board's name): a version
   other than the board definition's pinned image is a warning, not an error.
The node key goes to the registry and the board only: it is never printed or logged.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpremote.transport import TransportExecError

from urbansense.fieldkit import boardlink, build, nodeconfig
from urbansense.fieldkit._errors import FieldError
from urbansense.fieldkit.siteregistry import SiteRegistry

# Run on the board after the soft reset: one JSON line (the firmware's verdict on its files).
SELF_CHECK = """
import sys, json
if '/lib' not in sys.path:
    sys.path.append('/lib')
try:
    import us_config
    cfg = us_config.parse(open('config.json').read())
    us_config.check_board(cfg, json.loads(open('board.json').read()))
    k = __import__('us_' + cfg['kind'])
    if hasattr(k, 'check_config'):
        k.check_config(cfg)
    import us_node
    r = {'node_id': cfg['node_id'], 'kind': cfg['kind'], 'transport': cfg['transport'],
         'fw': us_node.FW_VERSION, 'fw_file': us_node.__file__, 'platform': sys.platform,
         'version': sys.version,
         'banner': sys.version.split('; ', 1)[-1] + '; ' + getattr(sys.implementation, '_machine', '?'),
         'micropython': '.'.join([str(v) for v in sys.implementation.version[:3]])}
except Exception as e:
    r = {'error': e.__class__.__name__ + ': ' + str(e)}
print(json.dumps(r))
"""


@dataclass
class Request:
    port: str
    kind: str
    board: str
    site: str
    registry: Path
    node_id: int | None = None
    transport: str = "ble"
    connect_timeout_s: float = 10.0


def _existing_identity(link: boardlink.BoardLink, site: SiteRegistry) -> dict[str, Any] | None:
    """The registry record of the node this board already is, if any."""
    text = link.read_text("config.json")
    if text is None:
        return None
    try:
        cfg = json.loads(text)
        node_id, key = cfg["node_id"], cfg["key"]
    except (ValueError, KeyError, TypeError):
        return None
    for rec in site.records():
        if rec["node_id"] == node_id and rec.get("key") == key:
            return rec
    return None


def provision(req: Request, progress: boardlink.Progress | None = None) -> dict[str, Any]:
    board = nodeconfig.load_board(req.board)
    chip = str(board.get("chip", "ESP32"))
    build.march_for(chip)
    nodeconfig.make_config(0, bytes(16), req.kind, board, req.transport)  # refused before any change
    site = SiteRegistry(req.registry)
    with boardlink.connect(req.port, req.connect_timeout_s) as link:
        frozen = build.query_frozen(link)
        if frozen is not None and frozen.get("source") != build.source_digest():
            raise FieldError(
                f"the board's image freezes other firmware (source stamp {str(frozen.get('source'))[:12]}, "
                f"firmware {frozen.get('fw')}) than this laptop's ({build.source_digest()[:12]})",
                "flash an image built from this tree (docs/BUILD-IMAGE.md), or the pinned stock image "
                "(`urbansense node flash --port PORT`), then provision again", exit_code=2)
        rec = _existing_identity(link, site)
        reused = False
        if rec is not None and not rec.get("revoked") and req.node_id in (None, rec["node_id"]):
            if rec.get("kind") != req.kind:
                raise FieldError(
                    f"this board is already node {rec['node_id']} ({rec['node_id']:08x}), a {rec.get('kind')} node",
                    f"use --kind {rec.get('kind')} to re-provision it, or revoke it first "
                    f"(`urbansense registry revoke --registry {req.registry} --node {rec['node_id']}`) "
                    "to make it a new node", exit_code=2)
            node_id, key = int(rec["node_id"]), bytes.fromhex(rec["key"])
            reused = True
        else:
            pub, key = site.add(req.kind, node_id=req.node_id,
                                extra={"board": req.board, "site": req.site, "transport": req.transport})
            node_id = int(pub["node_id"])
        cfg = nodeconfig.make_config(node_id, key, req.kind, board, req.transport)
        files = build.node_files(chip, (json.dumps(cfg) + "\n").encode(), nodeconfig.board_json_for_node(board),
                                 frozen=frozen is not None)
        counts = link.sync(files, progress)
        removed = link.remove_stale(files)
        link.soft_reset()
        try:
            check = link.run_json(SELF_CHECK)
        except TransportExecError as exc:
            check = {"error": exc.error_output.strip().splitlines()[-1] if exc.error_output.strip() else "no output"}
        if not isinstance(check, dict) or "error" in check:
            err = check.get("error") if isinstance(check, dict) else repr(check)
            hint = ("flash the pinned MicroPython image (`urbansense node flash --port PORT`): the board's "
                    "MicroPython does not load these .mpy files") if "mpy" in str(err) else \
                "run `urbansense node doctor --port PORT` and send its output to the firmware team"
            raise FieldError(f"the board's self-check failed after the copy: {err}", hint)
        if check.get("node_id") != node_id:
            raise FieldError(f"the board reports node {check.get('node_id')}, expected {node_id}",
                             "run the same command again")
    warnings = []
    pin = board.get("image") or {}
    if pin.get("micropython") and check.get("micropython") and check["micropython"] != pin["micropython"]:
        warnings.append(f"the board runs MicroPython {check['micropython']}, boards/{req.board}.json pins "
                        f"{pin['micropython']}: flash the pinned image (`urbansense node flash --port PORT "
                        f"--board {req.board}`) unless this one is known to work")
    return {
        "ok": True, "warnings": warnings, "node_id": node_id, "node": f"{node_id:08x}", "kind": req.kind, "site": req.site,
        "board": req.board, "transport": req.transport, "date": dt.date.today().isoformat(),
        "reused_identity": reused, **counts, "files_removed": removed, "frozen_firmware": frozen is not None,
        "self_check": {k: check[k] for k in ("fw", "fw_file", "platform", "version", "banner", "micropython")
                       if k in check},
        "registry": str(req.registry),
    }


def label_payload(result: dict[str, Any]) -> str:
    """What the QR code on the box holds: no key, only what a technician reads on the label."""
    return (f"urbansense:node={result['node']};kind={result['kind']};site={result['site']};"
            f"board={result['board']};date={result['date']}")


def write_label_png(result: dict[str, Any], path: Path) -> None:
    """The label as a QR-code PNG (the qrcode package, PNG through Pillow)."""
    import qrcode  # type: ignore[import-untyped]  # no stubs shipped

    img = qrcode.make(label_payload(result))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        img.save(f)


def label_text(result: dict[str, Any]) -> str:
    return (f"urbansense node {result['node']} ({result['node_id']})\n"
            f"kind {result['kind']}  site {result['site']}  board {result['board']}\n"
            f"provisioned {result['date']}")
