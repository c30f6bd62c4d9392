'use strict';
// A real local topology for the tests: `ostinato up` with every port chosen by the system, in a
// temporary data directory, with mutual TLS on certificates it makes there.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const PYTHON = process.env.OSTINATO_PYTHON || path.join(ROOT, '.venv', 'bin', 'python');
// `ostinato up` prints one line per service: NAME ADDRESS [metrics URL] log FILE.
const SERVICE_LINE = /^\s+(\S+)\s+(\S+:\d+)\s+(?:pid \d+\s+)?(?:metrics (\S+)\s+)?log (\S+)$/;

/** Starts a topology; `config` is TOML text added to the listen addresses (e.g. a controller cluster). */
async function startTopology({ config = '', env = {}, timeoutMs = 90000 } = {}) {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ostinato-node-'));
  const file = path.join(dataDir, 'ostinato.toml');
  fs.writeFileSync(
    file,
    [
      '[[subagents]]\nid = "subagent-1"\nlisten = "127.0.0.1:0"',
      config,
      config.includes('[joc]') ? '' : '[joc]\nlisten = "127.0.0.1:0"',
      config.includes('[controller]') ? '' : '[controller]\nlisten = "127.0.0.1:0"',
      config.includes('[director]') ? '' : '[director]\nlisten = "127.0.0.1:0"',
    ].join('\n'),
  );
  const child = spawn(PYTHON, ['-m', 'ostinato.cli', 'up', '--config', file, '--data-dir', path.join(dataDir, 'data')], {
    cwd: ROOT,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (chunk) => (stderr += chunk));
  const services = {};
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`ostinato up did not come up in ${timeoutMs} ms\n${stderr}`)), timeoutMs);
    child.on('exit', (code) => reject(new Error(`ostinato up exited with ${code}\n${stderr}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const match = SERVICE_LINE.exec(line);
      if (!match) return;
      services[match[1]] = { address: match[2], metrics: match[3] || '', log: match[4] };
      if (match[1] === 'joc') {
        clearTimeout(timer); // JOC starts last and is printed last
        resolve();
      }
    });
  });
  try {
    await ready;
  } catch (error) {
    child.kill('SIGTERM');
    throw error;
  }
  const tlsDir = path.join(dataDir, 'data', 'pki');
  return {
    services,
    dataDir,
    tlsDir,
    joc: services.joc.address,
    async stop() {
      if (child.exitCode !== null) return child.exitCode;
      const exited = new Promise((resolve) => child.on('exit', resolve));
      child.kill('SIGTERM');
      const code = await exited;
      fs.rmSync(dataDir, { recursive: true, force: true });
      return code;
    },
  };
}

module.exports = { startTopology, PYTHON, ROOT };
