// Shared helpers for the browser end-to-end tests (node --test *.test.mjs).
//  - startNode(): run the trackmesh binary on 127.0.0.1 with ephemeral ports and one app, parse its ready line.
//  - launchChromium(): Debian's Chromium through playwright-core, fake camera/mic, loopback WebRTC allowed.
//  - serveDir(): a tiny static server on 127.0.0.1 (another origin than the node, so CORS is exercised).
// Every wait is bounded; a missing binary or browser is an error (tests fail, never skip).
import { spawn, execFileSync } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes, createHash, createPublicKey } from 'node:crypto';
import { chromium } from 'playwright-core';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const PAGES = path.join(HERE, 'pages');
export const OUT = path.join(HERE, '.out');
/** Where a failing test leaves a screenshot of each open page. */
export const SCREENSHOTS = path.resolve(HERE, '../../target/browser-screenshots');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const NODE_BIN = process.env.TRACKMESH_BIN
  ? path.resolve(process.env.TRACKMESH_BIN)
  : path.resolve(HERE, '../../target/debug/trackmesh');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Reject with a clear message if `p` does not settle within `ms`. */
export function withTimeout(p, ms, what) {
  let t;
  const timeout = new Promise((_, rej) => {
    t = setTimeout(() => rej(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}

/** Poll `fn` until it returns a truthy value (returned) or `timeoutMs` passes (throws with the last value). */
export async function pollUntil(fn, { timeoutMs = 10000, intervalMs = 100, what = 'condition' } = {}) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last value: ${JSON.stringify(last)}`);
    await sleep(intervalMs);
  }
}

export const randomHex = (bytes = 16) => randomBytes(bytes).toString('hex');

/** A UDP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close the socket). */
export async function freeUdpPort() {
  const sock = dgram.createSocket('udp4');
  await new Promise((resolve, reject) => { sock.once('error', reject); sock.bind(0, '127.0.0.1', resolve); });
  const { port } = sock.address();
  await new Promise((r) => sock.close(r));
  return port;
}

/** A port on 127.0.0.1 free for both UDP and TCP a moment ago (a TURN port takes both); up to 50 tries. */
export async function freeUdpTcpPort() {
  const net = await import('node:net');
  for (let i = 0; i < 50; i++) {
    const port = await freeUdpPort();
    const ok = await new Promise((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error('no port free for both UDP and TCP in 50 tries');
}

/** Parse `trackmesh ready key=value key=value ...` (fields may be appended later) into an object, or null. */
export function parseReadyLine(text) {
  const m = text.match(/^trackmesh ready (.*\S)\s*$/m);
  if (!m) return null;
  const fields = {};
  for (const kv of m[1].split(/\s+/)) {
    const i = kv.indexOf('=');
    if (i > 0) fields[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return fields.http && fields.media ? fields : null;
}

/**
 * A self-signed certificate for 127.0.0.1 and localhost, made with `openssl` (node's crypto cannot
 * make X.509) in a fresh temporary directory. Returns { dir, certPath, keyPath, certPem, spki }:
 * `spki` is base64(SHA-256(SubjectPublicKeyInfo)), what Chromium's
 * `--ignore-certificate-errors-spki-list` takes to trust this one certificate and no other.
 */
export function selfSignedCert() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trackmesh-tls-'));
  const certPath = path.join(dir, 'cert.pem');
  const keyPath = path.join(dir, 'key.pem');
  try {
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=127.0.0.1',
      '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost',
    ], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 20000 });
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`making a self-signed certificate with openssl failed (tests/browser/install.sh installs openssl): ${e.message}`);
  }
  const certPem = fs.readFileSync(certPath, 'utf8');
  const spkiDer = createPublicKey(fs.readFileSync(keyPath)).export({ type: 'spki', format: 'der' });
  const spki = createHash('sha256').update(spkiDer).digest('base64');
  return { dir, certPath, keyPath, certPem, spki };
}

/**
 * A request from the test process that trusts `ca` (a PEM certificate) for an https:// URL, with
 * fetch's shape for the little the helpers need: { status, text() }. Plain fetch when no `ca`.
 */
async function request(url, { method = 'GET', headers = {}, body, ca } = {}) {
  if (!ca || !url.startsWith('https:')) return fetch(url, { method, headers, body });
  return new Promise((resolve, reject) => {
    const req = https.request(url, { method, headers, ca }, (res) => {
      const chunks = [];
      let size = 0;
      res.on('data', (c) => { size += c.length; if (size <= 16 << 20) chunks.push(c); });
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode, headers: res.headers, text: async () => text, json: async () => JSON.parse(text) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/**
 * Start a trackmesh node: `--http 127.0.0.1:0 --media 127.0.0.1:0 --gossip 127.0.0.1:<free> --relay 127.0.0.1:0
 * --app ID:SECRET [--admin-token T] ...extraArgs` (--gossip/--relay only when extraArgs do not set them).
 * `extraArgs` may be a function of a free gossip port, returning the arguments (with that
 * `--gossip`): the port is then picked again if it was taken before the node bound it.
 * Resolves when the `trackmesh ready http=IP:PORT media=IP:PORT ...` line appears on stdout (bounded).
 * With `tls` (from selfSignedCert()) the node serves HTTPS with it: `origin` is https:// (the ready
 * line's `scheme=`) and api()/admin()/fetch() trust that certificate.
 * Returns { appId, secret, http, media, gossip?, relay?, node?, tag?, region?, ready, origin, base,
 *           stderr(), api(), admin(), fetch(), stop() }  (`ready` holds every key=value of the ready line).
 */
export async function startNode(opts = {}) {
  const extraArgs = opts.extraArgs ?? [];
  // A port free a moment ago may be taken before the node binds it (another process's ephemeral
  // port): a gossip port picked here is picked again, up to three times.
  const given = typeof extraArgs !== 'function'
    && extraArgs.some((a) => a === '--gossip' || a.startsWith('--gossip='));
  for (let attempt = 1; ; attempt++) {
    const gossip = given ? undefined : await freeUdpPort();
    const args = typeof extraArgs === 'function' ? extraArgs(gossip) : extraArgs;
    try {
      return await startNodeOnce({ ...opts, extraArgs: args, gossip });
    } catch (e) {
      if (given || attempt >= 3 || !/for gossip: Address already in use/.test(e.message)) throw e;
    }
  }
}

async function startNodeOnce({ appId = randomHex(16), secret = randomHex(16), extraArgs = [], gossip, adminToken, tls, readyTimeoutMs = 20000 } = {}) {
  if (!fs.existsSync(NODE_BIN)) {
    throw new Error(`trackmesh binary not found at ${NODE_BIN} (build it with \`cargo build --workspace --bins\` or set TRACKMESH_BIN)`);
  }
  const has = (flag) => extraArgs.some((a) => a === flag || a.startsWith(`${flag}=`));
  const args = ['--http', '127.0.0.1:0', '--media', '127.0.0.1:0', '--app', `${appId}:${secret}`];
  // the node's defaults are fixed ports (gossip 7702, relay 7703); keep parallel runs apart
  if (!has('--gossip')) args.push('--gossip', `127.0.0.1:${gossip ?? await freeUdpPort()}`);
  if (!has('--relay')) args.push('--relay', '127.0.0.1:0');
  if (adminToken !== undefined) args.push('--admin-token', adminToken);
  if (tls) args.push('--tls-cert', tls.certPath, '--tls-key', tls.keyPath);
  args.push(...extraArgs);
  const proc = spawn(NODE_BIN, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  let stdout = '';
  let stderr = '';
  const maxKeep = 2_000_000;
  proc.stderr.on('data', (d) => { stderr += d; if (stderr.length > maxKeep) stderr = stderr.slice(-maxKeep / 2); });
  const exited = new Promise((r) => proc.once('exit', (code, sig) => r({ code, sig })));
  const ready = new Promise((resolve, reject) => {
    proc.stdout.on('data', (d) => {
      stdout += d;
      const fields = parseReadyLine(stdout);
      if (fields) resolve(fields);
    });
    proc.once('error', reject);
    exited.then(({ code, sig }) => reject(new Error(`trackmesh exited before ready (code=${code} signal=${sig})\nargs: ${args.join(' ')}\nstdout:\n${stdout}\nstderr:\n${stderr.slice(-4000)}`)));
  });
  let addrs;
  try {
    addrs = await withTimeout(ready, readyTimeoutMs, `"trackmesh ready" line from ${NODE_BIN}`);
  } catch (e) {
    proc.kill('SIGKILL');
    throw new Error(`${e.message}\nstdout so far:\n${stdout}\nstderr so far:\n${stderr.slice(-4000)}`);
  }
  const origin = `${addrs.scheme === 'https' ? 'https' : 'http'}://${addrs.http}`;
  const ca = tls?.certPem;
  const node = {
    ...addrs, ready: addrs, appId, secret, proc, args, origin,
    base: `${origin}/v1/apps/${appId}`,
    stdout: () => stdout,
    stderr: () => stderr,
    /** fetch(url, init) from the test process, trusting the node's certificate when it has one. */
    fetch: (url, init = {}) => request(url, { ...init, ca }),
    /** Call the API from the test process (not the browser). Returns {status, json}. */
    async api(method, p, body) {
      const res = await withTimeout(request(`${node.base}${p}`, {
        ca,
        method,
        headers: { authorization: `Bearer ${secret}`, 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      }), 10000, `${method} ${p}`);
      const text = await res.text();
      let json;
      try { json = JSON.parse(text); } catch { json = { unparsable: text }; }
      return { status: res.status, json };
    },
    /** GET/POST `origin + p` (e.g. /admin/cluster) with the admin token. Returns {status, json}. */
    async admin(p, { method = 'GET', token = adminToken } = {}) {
      const res = await withTimeout(request(`${origin}${p}`, {
        ca, method, headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
      }), 10000, `${method} ${p}`);
      const text = await res.text();
      let json;
      try { json = JSON.parse(text); } catch { json = { unparsable: text }; }
      return { status: res.status, json };
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGTERM');
        const done = await Promise.race([exited.then(() => true), sleep(3000).then(() => false)]);
        if (!done) { proc.kill('SIGKILL'); await withTimeout(exited, 3000, 'trackmesh to die after SIGKILL').catch(() => {}); }
      }
    },
  };
  return node;
}

export const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-default-apps', '--disable-extensions', '--mute-audio',
  '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
  // loopback WebRTC: keep 127.0.0.1 host candidates, no mDNS host names
  '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
  // pulled audio plays without a user gesture
  '--autoplay-policy=no-user-gesture-required',
];

/**
 * Launch Debian's Chromium with a fresh profile. Returns { ctx, page, close() }.
 * Console messages of pages go to stderr when VERBOSE is set, and are always kept in `logs`.
 */
export async function launchChromium({ timeoutMs = 30000, extraArgs = [] } = {}) {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`Chromium not found at ${CHROMIUM} (run tests/browser/install.sh)`);
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'trackmesh-chromium-'));
  let ctx;
  try {
    // headless:false because --headless is in the args (playwright would otherwise add its own variant)
    ctx = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM, headless: false, args: [...CHROMIUM_FLAGS, ...extraArgs], timeout: timeoutMs,
      viewport: { width: 1100, height: 900 },
    });
  } catch (e) {
    fs.rmSync(userDataDir, { recursive: true, force: true });
    throw e;
  }
  ctx.setDefaultTimeout(15000);
  const logs = [];
  const watch = (page) => {
    page.on('console', (m) => { const s = `[page ${m.type()}] ${m.text()}`; logs.push(s); if (process.env.VERBOSE) console.error(s); });
    page.on('pageerror', (e) => { const s = `[page error] ${e.message}`; logs.push(s); console.error(s); });
  };
  ctx.pages().forEach(watch);
  ctx.on('page', watch);
  const page = ctx.pages()[0] || await ctx.newPage();
  return {
    ctx, page, logs,
    async close() {
      await withTimeout(ctx.close(), 10000, 'Chromium to close').catch((e) => console.error(e.message));
      fs.rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** Serve `dir` on 127.0.0.1:<ephemeral>. Returns { origin, close() }. */
export async function serveDir(dir = PAGES) {
  const types = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8' };
  const srv = http.createServer((req, res) => {
    const p = path.normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname)).replace(/^(\.\.[/\\])+/, '');
    const file = path.join(dir, p);
    if (!file.startsWith(dir) || !fs.existsSync(file) || !fs.statSync(file).isFile()) { res.writeHead(404); res.end('not found'); return; }
    res.writeHead(200, { 'content-type': types[path.extname(file)] || 'application/octet-stream', 'cache-control': 'no-store' });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  return {
    origin: `http://127.0.0.1:${srv.address().port}`,
    close: () => new Promise((r) => { srv.closeAllConnections?.(); srv.close(() => r()); }),
  };
}

/** Last `n` lines of the node's stderr, for failure messages. */
export function tail(text, n = 40) {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[[0-9;]*m/g, '').split('\n').slice(-n).join('\n');
}

/** Run `fn`, and when it throws, append the node's stderr tail and the page logs to the error message. */
export async function explain(node, browser, fn) {
  try {
    return await fn();
  } catch (e) {
    const extra = [];
    if (browser?.logs?.length) extra.push(`--- page console (last 30) ---\n${browser.logs.slice(-30).join('\n')}`);
    if (node) extra.push(`--- trackmesh stderr (last 40 lines) ---\n${tail(node.stderr())}`);
    e.message = `${e.message}\n${extra.join('\n')}`;
    throw e;
  }
}

/**
 * Two nodes of one cluster on 127.0.0.1: A in region "eu" and B in region "us", B joining
 * through A's gossip address, both with the same app and admin token.
 */
export async function startTwoNodeCluster({ appId, secret, adminToken }) {
  const clusterSecret = randomHex(16);
  const common = (region, gossipPort) => [
    '--region', region, '--gossip', `127.0.0.1:${gossipPort}`, '--relay', '127.0.0.1:0',
    '--cluster-secret', clusterSecret,
  ];
  const A = await startNode({ appId, secret, adminToken, extraArgs: (g) => [...common('eu', g), '--node-id', `a-eu-${randomHex(4)}`] });
  const B = await startNode({
    appId, secret, adminToken,
    extraArgs: (g) => [...common('us', g), '--node-id', `b-us-${randomHex(4)}`, '--seed', A.gossip],
  });
  return { A, B };
}

/** Run `fn`; on failure append each named node's stderr tail and the page console to the message. */
export async function explainNodes(nodes, browser, fn) {
  try {
    return await fn();
  } catch (e) {
    const extra = [];
    if (browser?.logs?.length) extra.push(`--- page console (last 30) ---\n${browser.logs.slice(-30).join('\n')}`);
    for (const [name, n] of Object.entries(nodes)) {
      if (n) extra.push(`--- node ${name} stderr (last 30 lines) ---\n${tail(n.stderr(), 30)}`);
    }
    e.message = `${e.message}\n${extra.join('\n')}`;
    throw e;
  }
}

/**
 * Run `fn`; when it throws, save a screenshot of every open page of `browser` as
 * `target/browser-screenshots/<name>-<n>.png` and name the files in the error.
 */
export async function screenshotsOnFailure(browser, name, fn) {
  try {
    return await fn();
  } catch (e) {
    const saved = [];
    try {
      fs.mkdirSync(SCREENSHOTS, { recursive: true });
      const pages = browser?.ctx?.pages() || [];
      for (const [i, page] of pages.entries()) {
        const file = path.join(SCREENSHOTS, `${name}-${i}.png`);
        await withTimeout(page.screenshot({ path: file, fullPage: true }), 10000, `screenshot ${file}`)
          .then(() => saved.push(file), (err) => saved.push(`${file} (failed: ${err.message})`));
      }
    } catch (err) {
      saved.push(`(screenshots failed: ${err.message})`);
    }
    if (saved.length) e.message = `${e.message}
screenshots: ${saved.join(', ')}`;
    throw e;
  }
}
