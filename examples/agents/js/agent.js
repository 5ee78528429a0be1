// Example Warden agent in JavaScript: a daemon tracked by its pid file (the same check as the
// Rust example, and like it, it names the daemon's pid with `watch` so the engine sees it die at
// once). Build: npm run build (or `cargo xtask plugins`, which also embeds warden.toml).
//
// Host imports that fail throw an error whose `payload` is the agent-error; letting it escape an
// action returns that error to the engine. Throwing { tag, val } returns our own agent-error.
import { exec, log, stat, readFile, sleep, watch } from 'warden:agent/host@0.2.0';

const param = (ctx, name) => (ctx.params.find(([k]) => k === name) || [])[1];
const require = (ctx, name) => {
  const v = param(ctx, name);
  if (!v) throw { tag: 'invalid-config', val: `parameter \`${name}\` is required` };
  return v;
};
const fail = (msg) => ({ tag: 'failed', val: msg });

// The live pid from the pid file, or null. A zombie (state Z) counts as dead.
function livePid(ctx) {
  const file = require(ctx, 'pidfile');
  if (stat(file) === undefined) return null;
  const pid = parseInt(new TextDecoder().decode(readFile(file, 64)).trim(), 10);
  if (!Number.isInteger(pid) || pid <= 0) return null;
  let st;
  try {
    st = new TextDecoder().decode(readFile(`/proc/${pid}/stat`, 4096));
  } catch (e) {
    return null; // no such process
  }
  const state = st.slice(st.lastIndexOf(')') + 1).trim()[0];
  return state === 'Z' || state === 'X' ? null : pid;
}

function waitUntil(ms, ok) {
  for (let waited = 0; waited < ms; waited += 100) {
    if (ok()) return true;
    sleep(100);
  }
  return ok();
}

// Name the daemon's process (warden:agent@0.2.0): the engine monitors the moment it exits. A
// refusal only means interval monitoring.
function watchPid(pid) {
  try {
    watch([{ tag: 'pid', val: pid }]);
  } catch (e) {
    log('debug', `no process watch (${JSON.stringify(e.payload)}); failures are seen at the next monitor`);
  }
}

const run = (program, args) => exec(program, args, { env: [], stdin: undefined, timeoutMs: undefined, cwd: undefined });

export const agent = {
  metadata() {
    return {
      name: 'example-js',
      version: '0.2.0',
      description: 'A daemon tracked by its pid file (example agent in JavaScript)',
      parameters: [
        { name: 'pidfile', description: "Absolute path of the daemon's pid file", required: true, default: undefined },
        { name: 'start', description: 'Absolute path of a program that starts the daemon and writes the pid file', required: true, default: undefined },
        { name: 'start_args', description: 'Arguments for `start`, separated by spaces', required: false, default: '' },
        { name: 'stop_grace_ms', description: 'How long to wait after TERM before KILL', required: false, default: '5000' },
      ],
      timeouts: { startMs: 30000, stopMs: 30000, monitorMs: 5000, recoverMs: 60000, validateMs: 5000 },
      monitorIntervalMs: 5000,
      localRecovery: true,
    };
  },

  validate(ctx) {
    if (stat(require(ctx, 'start')) === undefined) throw { tag: 'not-installed', val: `start program ${param(ctx, 'start')} does not exist` };
  },

  start(ctx) {
    const running = livePid(ctx);
    if (running !== null) {
      watchPid(running);
      return;
    }
    const args = (param(ctx, 'start_args') || '').split(/\s+/).filter((a) => a);
    const out = run(require(ctx, 'start'), args);
    if (out.exitCode !== 0) throw fail(`start program failed (exit ${out.exitCode}): ${out.stderr.trim()}`);
    if (!waitUntil(10000, () => livePid(ctx) !== null)) throw fail(`no live process in ${param(ctx, 'pidfile')} after start`);
    log('info', 'daemon started');
    watchPid(livePid(ctx));
  },

  stop(ctx) {
    const pid = livePid(ctx);
    if (pid === null) return;
    run('/bin/kill', ['-TERM', String(pid)]);
    const grace = parseInt(param(ctx, 'stop_grace_ms') || '5000', 10);
    if (waitUntil(grace, () => livePid(ctx) === null)) return;
    run('/bin/kill', ['-KILL', String(pid)]);
    if (!waitUntil(2000, () => livePid(ctx) === null)) throw fail(`process ${pid} survived KILL`);
  },

  monitor(ctx) {
    const pid = livePid(ctx);
    if (pid === null) return { tag: 'stopped' };
    watchPid(pid); // also after an engine restart: its first monitor is the probe
    return { tag: 'running' };
  },

  // The host calls exports as plain functions (`this` is undefined), so name the object.
  recover(ctx) {
    agent.stop(ctx);
    agent.start(ctx);
  },
};
