#!/usr/bin/env node
// A virtual board: the MicroPython WebAssembly port's REPL on stdin/stdout, behaving enough
// like an ESP32's USB serial REPL for the real mpremote (tests/support/vboard.py puts it
// behind a pty).
//
//   node tools/vboard.mjs --fs HOSTDIR [--heap SIZE] [--flash-bytes N] [--rom ROMDIR]
//
// --rom ROMDIR: what the chip and its image hold outside the filesystem, at /rom in the VM
// (hidden from the board's files like /dev): copied in at every boot, its _boot.py run before
// boot.py (as the ESP32 port runs its frozen _boot.py), and files the VM changed there (the
// fake NVS partition) written back to ROMDIR with the board's files. tests/support/vboard_rom.py
// puts simulated parts (machine, esp32) and frozen firmware modules there.
//
// --flash-bytes N: a filesystem that holds N bytes of file data; a write past that raises
// OSError(ENOSPC) as a full littlefs does on a board (the VM's own file system has no limit).
//
// HOSTDIR is the board's flash: copied into the VM at start, written back (changed files
// only, deletions too) after every raw-REPL command (the \x04 that ends its output), at
// every soft reset and when stdin closes or SIGTERM arrives. A SIGKILL mid-command loses
// that command's writes, as pulling the cable mid-copy loses the end of a file on a board.
//
// What the bridge does that the port does not (facts checked with mpremote 1.29):
// (a) bytes go to the REPL one at a time (mp_js_repl_process_char);
// (b) a raw-paste request (\x05 A \x01) is answered "R\x00" (unsupported) here: the port
//     would spin forever waiting for its flow-control window; mpremote falls back to the
//     plain raw REPL;
// (c) a soft reset (the REPL call returns 256) reloads the interpreter and keeps the files,
//     prints "MPY: soft reboot", runs boot.py, and main.py only from the friendly REPL (as
//     ports/esp32/main.c does); a raw-REPL soft reset comes back in the raw REPL;
// (d) the port's Emscripten errno values are printed as MicroPython's: "OSError: 44" ->
//     "[Errno 2] ENOENT", "OSError: 20" -> "[Errno 17] EEXIST" (mpremote maps those names).
// An endless loop in the VM cannot be interrupted (Ctrl-C is only read between calls).

import fs from "node:fs";
import path from "node:path";

const PKG = "@micropython/micropython-webassembly-pyscript";
const SYSTEM_DIRS = new Set(["dev", "proc", "tmp", "home", "rom"]);
const ERRNO = [
  [Buffer.from("OSError: 28\r"), Buffer.from("OSError: [Errno 28] ENOSPC\r")],
  [Buffer.from("OSError: 44\r"), Buffer.from("OSError: [Errno 2] ENOENT\r")],
  [Buffer.from("OSError: 20\r"), Buffer.from("OSError: [Errno 17] EEXIST\r")],
];

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i > 0 && i + 1 < process.argv.length ? process.argv[i + 1] : dflt;
}

const hostDir = arg("--fs", null);
if (!hostDir) {
  process.stderr.write("usage: node tools/vboard.mjs --fs HOSTDIR [--heap SIZE]\n");
  process.exit(2);
}
const heap = parseInt(arg("--heap", String(2 * 1024 * 1024)), 10);
const flashBytes = parseInt(arg("--flash-bytes", "0"), 10);
const romDir = arg("--rom", null);
// Installed at every boot when --flash-bytes is given: open() hands out files whose write()
// counts the bytes every file holds and refuses past the limit.
const QUOTA = `
def _install_quota(limit):
    import builtins, os
    _open = builtins.open
    def used(top=''):
        n = 0
        for e in os.ilistdir(top or '/'):
            p = (top + '/' + e[0]) if top else e[0]
            if top == '' and e[0] in ('dev', 'proc', 'tmp', 'home', 'rom'):
                continue
            n += used(p) if e[1] == 0x4000 else os.stat(p)[6]
        return n
    class Quota:
        def __init__(self, f):
            self.f = f
        def write(self, b):
            if used() + len(b) > limit:
                raise OSError(28)
            return self.f.write(b)
        def __getattr__(self, name):
            return getattr(self.f, name)
        def __enter__(self):
            return self
        def __exit__(self, *a):
            self.f.close()
    def open(path, mode='r', *a):
        f = _open(path, mode, *a)
        return Quota(f) if ('w' in mode or 'a' in mode) else f
    builtins.open = open
_install_quota(${flashBytes})
del _install_quota
`;
fs.mkdirSync(hostDir, { recursive: true });

// -- output, with the errno rewrite -------------------------------------------------------
let pending = Buffer.alloc(0);
let mute = false;
let commandEnded = false;
function emit(bytes) {
  if (mute) return;
  if (bytes.includes(0x04)) commandEnded = true;
  pending = Buffer.concat([pending, Buffer.from(bytes)]);
  for (const [from, to] of ERRNO) {
    let i;
    while ((i = pending.indexOf(from)) >= 0) {
      pending = Buffer.concat([pending.subarray(0, i), to, pending.subarray(i + from.length)]);
    }
  }
  // Hold back a tail that could still become one of the patterns.
  let hold = 0;
  for (const [from] of ERRNO) {
    for (let n = Math.min(from.length - 1, pending.length); n > hold; n--) {
      if (pending.subarray(pending.length - n).equals(from.subarray(0, n))) {
        hold = n;
        break;
      }
    }
  }
  const out = pending.subarray(0, pending.length - hold);
  pending = Buffer.from(pending.subarray(pending.length - hold));
  if (out.length) process.stdout.write(out);
}
function flushOut() {
  if (pending.length) process.stdout.write(pending);
  pending = Buffer.alloc(0);
}

// -- the board's files ----------------------------------------------------------------------
function vmWalk(FS, dir, out) {
  for (const name of FS.readdir(dir)) {
    if (name === "." || name === "..") continue;
    if (dir === "/" && SYSTEM_DIRS.has(name)) continue;
    const p = dir === "/" ? `/${name}` : `${dir}/${name}`;
    const st = FS.stat(p);
    if (FS.isDir(st.mode)) {
      out.dirs.push(p);
      vmWalk(FS, p, out);
    } else {
      out.files.set(p, Buffer.from(FS.readFile(p)));
    }
  }
  return out;
}

function snapshot(FS) {
  return vmWalk(FS, "/", { dirs: [], files: new Map() });
}

function restore(FS, snap) {
  for (const d of snap.dirs) {
    try {
      FS.mkdir(d);
    } catch {
      // exists
    }
  }
  for (const [p, data] of snap.files) FS.writeFile(p, new Uint8Array(data));
}

function hostSnapshot(dir, rel = "", out = { dirs: [], files: new Map() }) {
  for (const name of fs.readdirSync(dir).sort()) {
    const full = path.join(dir, name);
    const vm = `${rel}/${name}`;
    if (fs.statSync(full).isDirectory()) {
      out.dirs.push(vm);
      hostSnapshot(full, vm, out);
    } else {
      out.files.set(vm, fs.readFileSync(full));
    }
  }
  return out;
}

let written = new Map(); // what the host directory holds, by VM path
function writeBack(FS) {
  const snap = snapshot(FS);
  for (const d of snap.dirs) fs.mkdirSync(path.join(hostDir, d), { recursive: true });
  for (const [p, data] of snap.files) {
    const old = written.get(p);
    if (old && old.equals(data)) continue;
    const full = path.join(hostDir, p);
    fs.mkdirSync(path.dirname(full), { recursive: true });
    fs.writeFileSync(full, data);
  }
  for (const p of written.keys()) {
    if (!snap.files.has(p)) fs.rmSync(path.join(hostDir, p), { force: true });
  }
  const gone = [...hostSnapshot(hostDir).dirs].filter((d) => !snap.dirs.includes(d)).reverse();
  for (const d of gone) fs.rmSync(path.join(hostDir, d), { recursive: true, force: true });
  written = snap.files;
  if (romDir) romWriteBack(FS);
}

function romWriteBack(FS) {
  if (!FS.analyzePath("/rom").exists) return;
  for (const name of FS.readdir("/rom")) {
    const p = `/rom/${name}`;
    if (name === "." || name === ".." || FS.isDir(FS.stat(p).mode)) continue;
    const data = Buffer.from(FS.readFile(p));
    const full = path.join(romDir, name);
    if (fs.existsSync(full) && fs.readFileSync(full).equals(data)) continue;
    fs.writeFileSync(full, data);
  }
}

function romLoad(FS, host = romDir, vm = "/rom") {
  try {
    FS.mkdir(vm);
  } catch {
    // exists
  }
  for (const name of fs.readdirSync(host).sort()) {
    const full = path.join(host, name);
    if (fs.statSync(full).isDirectory()) romLoad(FS, full, `${vm}/${name}`);
    else FS.writeFile(`${vm}/${name}`, new Uint8Array(fs.readFileSync(full)));
  }
}

// -- the interpreter ----------------------------------------------------------------------
let loadMicroPython;
try {
  ({ loadMicroPython } = await import(PKG));
} catch (e) {
  process.stderr.write(`vboard: cannot load ${PKG} (${e.message}); run \`make setup\` (npm ci)\n`);
  process.exit(2);
}

let mp = null;
let raw = false;

async function boot(snap, inRaw) {
  mp = await loadMicroPython({ heapsize: heap, stdout: emit, stderr: emit, linebuffer: false });
  restore(mp.FS, snap);
  if (romDir) romLoad(mp.FS);
  if (flashBytes > 0) mp.runPython(QUOTA);
  mute = inRaw; // a raw-REPL soft reset shows no banner, only the raw prompt
  mp.replInit();
  mute = false;
  const runIfThere = (name) => {
    if (!mp.FS.analyzePath(`/${name}`).exists) return;
    try {
      mp.runPython(`exec(open(${JSON.stringify(name)}).read(), {"__name__": "__main__"})`);
    } catch (e) {
      emit(Buffer.from(String(e.message || e).replace(/\n/g, "\r\n")));
    }
  };
  if (romDir && mp.FS.analyzePath("/rom/_boot.py").exists) {
    try {
      mp.runPython('exec(open("/rom/_boot.py").read(), {"__name__": "_boot"})');
    } catch (e) {
      emit(Buffer.from(String(e.message || e).replace(/\n/g, "\r\n")));
    }
  }
  runIfThere("boot.py");
  if (inRaw) {
    raw = true;
    feedVm(0x01);
  } else if (snap.files.size) {
    runIfThere("main.py");
  }
}

function feedVm(c) {
  return mp.replProcessChar(c);
}

let held = []; // a raw-paste request being recognised
let queue = Promise.resolve();

function handle(c) {
  if (raw && (held.length || c === 0x05)) {
    held.push(c);
    const want = [0x05, 0x41, 0x01];
    if (held.every((b, i) => b === want[i])) {
      if (held.length === 3) {
        held = [];
        process.stdout.write(Buffer.from("R\x00"));
      }
      return null;
    }
    const bytes = held;
    held = [];
    let r = null;
    for (const b of bytes) r = feedOne(b) || r;
    return r;
  }
  return feedOne(c);
}

function feedOne(c) {
  if (c === 0x01) raw = true;
  else if (c === 0x02) raw = false;
  return feedVm(c);
}

async function softReset() {
  const wasRaw = raw;
  emit(Buffer.from("MPY: soft reboot\r\n"));
  const snap = snapshot(mp.FS);
  writeBack(mp.FS);
  await boot(snap, wasRaw);
}

process.stdin.on("data", (data) => {
  queue = queue.then(async () => {
    for (const c of data) {
      const r = handle(c);
      if (r === 256) await softReset();
    }
    flushOut();
    if (commandEnded) {
      commandEnded = false;
      writeBack(mp.FS);
    }
  });
});

function finish() {
  queue.then(() => {
    flushOut();
    writeBack(mp.FS);
    process.exit(0);
  });
}
process.stdin.on("end", finish);
process.on("SIGTERM", finish);

const initial = hostSnapshot(hostDir);
written = new Map(initial.files);
queue = queue.then(() => boot(initial, false)).then(flushOut); // input waits for power-on
