"""Local HTTP: /metrics (Prometheus text), /api/status (JSON), / (the status page). Read-only.

A deliberately tiny HTTP/1.1 server on asyncio streams: GET only, one request per connection,
bounded request size. Bound to 127.0.0.1 by default; the page polls /api/status.

The node table lists every registered node; one not heard since the gateway started
(``last_seen_s`` null in /api/status) reads "never", with "-" for what only a frame tells.
For the technician on site: a per-kind summary on top, a box that finds a node by id (also
``/?node=0000002a``), readings in human units (3.65 V, 30.6 °C, occupied / free, 55 % full,
12.345 m³), the RSSI range over the last 5 minutes, and why the node's last frames were
rejected (its last rejection reason, how many, how long ago).
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
#find{font:inherit;padding:.2rem .4rem;margin-top:1rem;width:14rem}
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
<table id="kinds-table"><thead><tr><th>kind</th><th>registered</th><th>heard</th><th>silent</th>
<th>low battery</th><th>alarms</th><th>rejected</th></tr></thead><tbody id="kinds"></tbody></table>
<div><canvas id="tput" width="480" height="120" aria-label="throughput"></canvas>
<canvas id="obox" width="480" height="120" aria-label="outbox depth"></canvas></div>
<input id="find" type="search" placeholder="find a node: id, e.g. 0000002a or 42" aria-label="find node">
<table id="nodes-table"><thead><tr><th>node</th><th>kind</th><th>last seen</th><th>RSSI</th><th>RSSI 5 min</th>
<th>battery</th><th>fcnt</th><th>last reading</th><th>alarms</th><th>rejected</th></tr></thead>
<tbody id="nodes"></tbody></table>
<script>
"use strict";
function $(id){return document.getElementById(id)}
function chart(c,series,label){const x=c.getContext("2d");x.clearRect(0,0,c.width,c.height);
 const max=Math.max(1,...series);x.strokeStyle="#06c";x.beginPath();
 series.forEach((v,i)=>{const px=i*(c.width-4)/Math.max(1,series.length-1)+2,
  py=c.height-4-(v/max)*(c.height-20);i?x.lineTo(px,py):x.moveTo(px,py)});x.stroke();
 x.fillStyle="#444";x.fillText(label+" (max "+max.toFixed(1)+")",4,12)}
function td(t){const e=document.createElement("td");e.textContent=t;return e}
const fmt={battery_mv:v=>(v/1000).toFixed(2)+" V",temperature_cC:v=>(v/100).toFixed(1)+" \u00b0C",
 occupied:v=>v?"occupied":"free",fill_pct:v=>v+" % full",volume_l:v=>(v/1000).toFixed(3)+" m\u00b3",
 distance_mm:v=>(v/1000).toFixed(2)+" m",flow_lph:v=>v+" l/h"};
function human(readings){return Object.entries(readings).map(([k,v])=>fmt[k]?fmt[k](v):k+"="+v).join(", ")}
function ago(t,now){return Math.round(now-t)+" s ago"}
function rssiRange(n,now){const r=(n.rssi_recent||[]).filter(([t])=>now-t<=300).map(([,v])=>v);
 return r.length?Math.min(...r)+" \u2026 "+Math.max(...r)+" dBm ("+r.length+")":"-"}
function matches(n,q){if(!q)return true;q=q.trim().toLowerCase();
 return n.node.includes(q.replace(/^0x/,""))||String(n.node_id)===q}
const params=new URLSearchParams(location.search);if(params.get("node"))$("find").value=params.get("node");
let last=null;$("find").addEventListener("input",()=>{if(last)render(last)});
function render(s){
  const now=Date.now()/1000,kinds={},rej=s.rejected_nodes||{};
  for(const n of s.nodes){const k=kinds[n.kind]=kinds[n.kind]||{registered:0,heard:0,silent:0,low:0,alarms:0,rejected:0};
   k.registered++;if(n.last_seen_s!=null)k.heard++;if(n.silent)k.silent++;if(n.low_battery)k.low++;
   if(n.alarms.length)k.alarms++;if(rej[n.node])k.rejected++}
  const kb=$("kinds");kb.replaceChildren();
  for(const [kind,k] of Object.entries(kinds).sort()){const tr=document.createElement("tr");tr.dataset.kind=kind;
   [kind,k.registered,k.heard,k.silent,k.low,k.alarms,k.rejected].forEach(v=>tr.appendChild(td(String(v))));kb.appendChild(tr)}
  const tb=$("nodes");tb.replaceChildren();const q=$("find").value;
  for(const n of s.nodes){if(!matches(n,q))continue;const tr=document.createElement("tr");tr.dataset.node=n.node;
   const seen=n.last_seen_s==null?"never":ago(n.last_seen_s,now),r=rej[n.node];
   const why=r?r.reason+" \u00d7"+r.count+", "+ago(r.at_s,now):"-";
   [n.node,n.kind,seen,n.rssi_dbm??"-",rssiRange(n,now),
    n.battery_mv?(n.battery_mv/1000).toFixed(2)+" V":"-",n.frames?n.fcnt:"-",human(n.readings)||"-",
    n.alarms.join(",")||"-",why
   ].forEach(v=>tr.appendChild(td(String(v))));tb.appendChild(tr)}
}
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
  last=s;render(s);
 }catch(e){$("broker").textContent="gateway unreachable";$("broker").className="bad"}
}
tick();setInterval(tick,2000);
</script></body></html>
"""
