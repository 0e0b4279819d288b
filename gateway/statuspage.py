"""Local HTTP: /metrics (Prometheus text), /api/status (JSON), / (the status page). Read-only.

A deliberately tiny HTTP/1.1 server on asyncio streams: GET only, one request per connection,
bounded request size. Bound to 127.0.0.1 by default; the page polls /api/status.

The node table lists every registered node; one not heard since the gateway started
(``last_seen_s`` null in /api/status) reads "never", with "-" for what only a frame tells.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from gateway.app import Gateway

_log = logging.getLogger(__name__)
_MAX_REQUEST: Final = 8192


async def start_http(gw: Gateway, host: str, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            if len(head) > _MAX_REQUEST:
                raise ValueError("request too large")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"read-only\n"
            elif path == "/metrics":
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
                body = gw.metrics.render().encode()
            elif path in ("/api/status", "/status.json"):
                status, ctype = "200 OK", "application/json"
                body = json.dumps(gw.status()).encode()
            elif path in ("/", "/index.html"):
                status, ctype, body = "200 OK", "text/html; charset=utf-8", PAGE.encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Cache-Control: no-store\r\nConnection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=_MAX_REQUEST)


PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>urbansense gateway</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1rem;color:#222}
h1{font-size:1.2rem;margin:0 0 .5rem}
.cards{display:flex;gap:1rem;flex-wrap:wrap}
.card{border:1px solid #ccc;border-radius:6px;padding:.5rem .8rem;min-width:9rem}
.card b{display:block;font-size:1.3rem}
.ok{color:#080}.bad{color:#b00}
table{border-collapse:collapse;margin-top:1rem;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.25rem .5rem;text-align:left;font-variant-numeric:tabular-nums}
canvas{border:1px solid #ddd;margin-top:.5rem}
</style></head><body>
<h1>urbansense gateway <span id="gw"></span></h1>
<div class="cards">
<div class="card">broker<b id="broker">-</b></div>
<div class="card">frames/s<b id="fps">-</b></div>
<div class="card">accepted<b id="accepted">-</b></div>
<div class="card">published<b id="published">-</b></div>
<div class="card">outbox<b id="outbox">-</b></div>
<div class="card">rejected<b id="rejected">-</b></div>
</div>
<div><canvas id="tput" width="480" height="120" aria-label="throughput"></canvas>
<canvas id="obox" width="480" height="120" aria-label="outbox depth"></canvas></div>
<table><thead><tr><th>node</th><th>kind</th><th>last seen</th><th>RSSI</th><th>battery</th>
<th>fcnt</th><th>last reading</th><th>alarms</th></tr></thead><tbody id="nodes"></tbody></table>
<script>
"use strict";
function $(id){return document.getElementById(id)}
function chart(c,series,label){const x=c.getContext("2d");x.clearRect(0,0,c.width,c.height);
 const max=Math.max(1,...series);x.strokeStyle="#06c";x.beginPath();
 series.forEach((v,i)=>{const px=i*(c.width-4)/Math.max(1,series.length-1)+2,
  py=c.height-4-(v/max)*(c.height-20);i?x.lineTo(px,py):x.moveTo(px,py)});x.stroke();
 x.fillStyle="#444";x.fillText(label+" (max "+max.toFixed(1)+")",4,12)}
function td(t){const e=document.createElement("td");e.textContent=t;return e}
async function tick(){
 try{const r=await fetch("/api/status",{cache:"no-store"});const s=await r.json();
  $("gw").textContent=s.site+"/"+s.gateway;
  $("broker").textContent=s.broker.connected?"online":"offline";
  $("broker").className=s.broker.connected?"ok":"bad";
  $("accepted").textContent=s.accepted;$("published").textContent=s.published.readings;
  $("outbox").textContent=s.outbox.batches+" / "+(s.outbox.bytes/1024).toFixed(1)+" KiB";
  $("rejected").textContent=Object.values(s.rejections).reduce((a,b)=>a+b,0);
  const h=s.history,rates=[];for(let i=1;i<h.length;i++){
   rates.push((h[i].frames_in-h[i-1].frames_in)/Math.max(.001,h[i].t-h[i-1].t))}
  $("fps").textContent=rates.length?rates[rates.length-1].toFixed(1):"0";
  chart($("tput"),rates,"frames/s");chart($("obox"),h.map(p=>p.outbox_batches),"outbox batches");
  const tb=$("nodes");tb.replaceChildren();const now=Date.now()/1000;
  for(const n of s.nodes){const tr=document.createElement("tr");tr.dataset.node=n.node;
   const last=Object.entries(n.readings).map(([k,v])=>k+"="+v).join(" ");
   const seen=n.last_seen_s==null?"never":Math.round(now-n.last_seen_s)+" s ago";
   [n.node,n.kind,seen,n.rssi_dbm??"-",
    n.battery_mv?n.battery_mv+" mV":"-",n.frames?n.fcnt:"-",last||"-",n.alarms.join(",")||"-"
   ].forEach(v=>tr.appendChild(td(String(v))));tb.appendChild(tr)}
 }catch(e){$("broker").textContent="gateway unreachable";$("broker").className="bad"}
}
tick();setInterval(tick,2000);
</script></body></html>
"""
