#!/usr/bin/env node
// Run a MicroPython script on the official MicroPython WebAssembly port (Node >= 20).
//
//   node tools/mpvm.mjs [--mount HOST:VM]... [--path VMDIR]... [--heap SIZE]
//                       (SCRIPT.py | -c CODE) [ARGS...]
//
//   --mount HOST:VM  copy a host file or directory (recursively) into the VM file system;
//                    every mounted directory is also put on sys.path (after "").
//   --path VMDIR     put an extra VM directory on sys.path.
//   --heap SIZE      initial GC heap (e.g. 256k, 4m; default 1m). The PyScript build grows
//                    its heap on demand, so this is not a hard limit: measure with gc.mem_alloc().
//   -c CODE          run CODE instead of a script file.
//
// Top-level `await` works (the code runs through runPythonAsync); the port has no asyncio.run.
// Exit status: 0 on success, the SystemExit code if raised, 1 with the traceback on stderr if
// the script raised, 2 on usage errors.

import fs from "node:fs";
import path from "node:path";

const PKG = "@micropython/micropython-webassembly-pyscript";

function usage(msg) {
  process.stderr.write(`mpvm: ${msg}\n`);
  process.stderr.write(
    "usage: node tools/mpvm.mjs [--mount HOST:VM]... [--path VMDIR]... [--heap SIZE] (SCRIPT | -c CODE) [ARGS...]\n",
  );
  process.exit(2);
}

function parseSize(text) {
  const m = /^(\d+)([kKmM]?)$/.exec(text);
  if (!m) usage(`bad size: ${text}`);
  const mult = { "": 1, k: 1024, m: 1024 * 1024 }[m[2].toLowerCase()];
  return parseInt(m[1], 10) * mult;
}

function parseArgs(argv) {
  const opts = { mounts: [], paths: [], heap: 1024 * 1024, code: null, script: null, args: [] };
  let i = 0;
  while (i < argv.length) {
    const a = argv[i];
    const need = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--mount" || a === "-m") {
      const v = need();
      const sep = v.lastIndexOf(":");
      if (sep <= 0 || !v.slice(sep + 1).startsWith("/")) usage(`--mount wants HOST:/VMPATH, got ${v}`);
      opts.mounts.push([v.slice(0, sep), v.slice(sep + 1)]);
    } else if (a === "--path") {
      opts.paths.push(need());
    } else if (a === "--heap") {
      opts.heap = parseSize(need());
    } else if (a === "-c") {
      opts.code = need();
      opts.args = argv.slice(i + 1);
      return opts;
    } else if (a === "--") {
      i += 1;
      break;
    } else if (a.startsWith("-") && a !== "-") {
      usage(`unknown option ${a}`);
    } else {
      break;
    }
    i += 1;
  }
  if (i >= argv.length) usage("no script given");
  opts.script = argv[i];
  opts.args = argv.slice(i + 1);
  return opts;
}

function vmMkdirP(FS, dir) {
  let cur = "";
  for (const part of dir.split("/").filter(Boolean)) {
    cur += "/" + part;
    try {
      FS.mkdir(cur);
    } catch {
      // EEXIST (or a file in the way, which the next write will report)
    }
  }
}

function copyIn(FS, host, vm) {
  const st = fs.statSync(host);
  if (st.isDirectory()) {
    vmMkdirP(FS, vm);
    for (const name of fs.readdirSync(host).sort()) {
      if (name === "__pycache__" || name.startsWith(".")) continue;
      copyIn(FS, path.join(host, name), `${vm.replace(/\/$/, "")}/${name}`);
    }
  } else if (st.isFile()) {
    vmMkdirP(FS, path.posix.dirname(vm));
    FS.writeFile(vm, new Uint8Array(fs.readFileSync(host)));
  }
}

// Byte sink that batches the VM's per-byte output into larger writes.
function makeSink(stream) {
  let buf = [];
  const flush = () => {
    if (buf.length) {
      stream.write(Buffer.from(buf));
      buf = [];
    }
  };
  const put = (bytes) => {
    for (const b of bytes) {
      buf.push(b);
      if (b === 10 || buf.length >= 4096) flush();
    }
  };
  return { put, flush };
}

function pyStr(s) {
  return JSON.stringify(s); // a JSON string literal is a valid Python string literal
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  let source;
  let scriptName = "-c";
  if (opts.code !== null) {
    source = opts.code;
  } else {
    scriptName = opts.script;
    try {
      source = fs.readFileSync(opts.script, "utf8");
    } catch (e) {
      usage(`cannot read ${opts.script}: ${e.message}`);
    }
  }

  let loadMicroPython;
  try {
    ({ loadMicroPython } = await import(PKG));
  } catch (e) {
    process.stderr.write(`mpvm: cannot load ${PKG} (${e.message}); run \`make setup\` (npm ci)\n`);
    process.exit(2);
  }

  const out = makeSink(process.stdout);
  const err = makeSink(process.stderr);
  const mp = await loadMicroPython({
    heapsize: opts.heap,
    stdout: (b) => out.put(b),
    stderr: (b) => err.put(b),
    linebuffer: false,
  });

  const sysPath = [];
  for (const [host, vm] of opts.mounts) {
    if (!fs.existsSync(host)) usage(`mount source does not exist: ${host}`);
    copyIn(mp.FS, host, vm);
    if (fs.statSync(host).isDirectory()) sysPath.push(vm.replace(/(.)\/$/, "$1"));
  }
  sysPath.push(...opts.paths);

  const setup =
    "def _mpvm_setup():\n" +
    "    import sys\n" +
    `    for p in reversed(${JSON.stringify(sysPath)}):\n` +
    "        if p in sys.path:\n            sys.path.remove(p)\n" +
    "        sys.path.insert(1, p)\n" +
    "    sys.argv.clear()\n" +
    `    sys.argv.extend(${JSON.stringify([scriptName, ...opts.args])})\n` +
    "_mpvm_setup()\n" +
    "del _mpvm_setup\n";

  let code = 0;
  try {
    mp.runPython(setup);
    await mp.runPythonAsync(source);
  } catch (e) {
    if (!e || e.name !== "PythonError") throw e;
    if (e.type === "SystemExit") {
      const lines = e.message.trimEnd().split("\n");
      const arg = lines[lines.length - 1].replace(/^SystemExit:?\s?/, "");
      if (arg === "" || arg === "None") code = 0;
      else if (/^-?\d+$/.test(arg)) code = parseInt(arg, 10) & 0xff;
      else {
        err.put(Buffer.from(`${arg}\n`));
        code = 1;
      }
    } else {
      err.put(Buffer.from(e.message.replace(/"<stdin>"/g, pyStr(scriptName))));
      code = 1;
    }
  }
  out.flush();
  err.flush();
  // Exit once the buffered output has drained; pending asyncio timers must not keep us alive.
  process.stdout.write("", () => process.stderr.write("", () => process.exit(code)));
}

main().catch((e) => {
  process.stderr.write(`mpvm: internal error: ${e && e.stack ? e.stack : e}\n`);
  process.exit(2);
});
