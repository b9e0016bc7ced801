// TURN: a page with iceTransportPolicy "relay" and the credentials from generate-ice-servers pushes
// the fake camera + mic in one session and pulls them in another; every packet goes through the
// node's embedded TURN server, and the pulled video is decoded.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startNode, launchChromium, serveDir, pollUntil, withTimeout, explain, freeUdpPort, randomHex } from './lib.mjs';

const KEY = 'browserkey';
const KEY_SECRET = randomHex(16);
let node, browser, site;

before(async () => {
  node = await startNode({ extraArgs: ['--turn-key', `${KEY}:${KEY_SECRET}`, '--turn-port', String(await freeUdpPort())] });
  site = await serveDir();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await site?.close();
  await node?.stop();
});

async function metrics() {
  const text = await (await withTimeout(fetch(`${node.origin}/metrics`), 10000, 'GET /metrics')).text();
  const m = {};
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    m[line.slice(0, i)] = Number(line.slice(i + 1));
  }
  return m;
}

async function relayedCall(t, { only } = {}) {
  return explain(node, browser, async () => {
    assert.notEqual(node.ready.turn, 'off', `the ready line names the TURN address: ${JSON.stringify(node.ready)}`);
    const res = await withTimeout(fetch(`${node.origin}/v1/turn/keys/${KEY}/credentials/generate-ice-servers`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY_SECRET}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ttl: 600 }),
    }), 10000, 'generate-ice-servers');
    assert.equal(res.status, 201);
    let { iceServers } = await res.json();
    if (only) iceServers = iceServers.map((s) => ({ ...s, urls: s.urls.filter((u) => u.includes(only)) })).filter((s) => s.urls.length);
    t.diagnostic(`iceServers: ${JSON.stringify(iceServers.map((s) => s.urls))}`);

    const { page } = browser;
    await page.goto(`${site.origin}/raw.html`);
    const cfg = { base: node.base, secret: node.secret, rtc: { iceServers, iceTransportPolicy: 'relay' } };

    const pub = await withTimeout(page.evaluate((cfg) => window.publish(cfg), cfg), 30000, 'publish through TURN (connected)')
      .catch(async (e) => {
        const m = await metrics();
        e.message += `\nTURN figures: ${JSON.stringify(Object.fromEntries(Object.entries(m).filter(([k]) => k.startsWith('trackmesh_turn'))))}`;
        throw e;
      });
    await pollUntil(async () => {
      const s = await page.evaluate(() => window.stats());
      return s.pub.video.packetsSent > 0;
    }, { timeoutMs: 10000, what: 'publisher outbound packets' });
    await withTimeout(page.evaluate(([cfg, remote]) => window.pull(cfg, remote),
      [cfg, pub.tracks.map((x) => ({ sessionId: pub.sessionId, trackName: x.trackName }))]), 30000, 'pull through TURN');

    const s = await pollUntil(async () => {
      const s = await page.evaluate(() => window.stats());
      return s.sub.video.framesDecoded > 10 && s.sub.audio.packetsReceived > 0 ? s : null;
    }, { timeoutMs: 20000, what: 'pulled video framesDecoded > 10 through TURN' })
      .catch(async (e) => {
        e.message += `\nstats: ${JSON.stringify(await page.evaluate(() => window.stats()), null, 1)}`;
        throw e;
      });
    t.diagnostic(`pairs: pub ${s.pub.pair?.local} -> ${s.pub.pair?.remote}; sub ${s.sub.pair?.local} -> ${s.sub.pair?.remote}`);
    assert.match(s.pub.pair?.local ?? '', / relay$/, 'the publisher sends from a relay candidate');
    assert.match(s.sub.pair?.local ?? '', / relay$/, 'the subscriber receives on a relay candidate');

    const m = await pollUntil(async () => {
      const m = await metrics();
      return m['trackmesh_turn_relayed_bytes_total{direction="to_peer"}'] > 0 ? m : null;
    }, { timeoutMs: 15000, what: 'relayed bytes to the SFU counted (every 5 s)' }).catch(async () => metrics());
    t.diagnostic(`allocations ${m.trackmesh_turn_allocations}, relayed to_peer ${m['trackmesh_turn_relayed_bytes_total{direction="to_peer"}']}, to_client ${m['trackmesh_turn_relayed_bytes_total{direction="to_client"}']}`);
    assert.ok(m.trackmesh_turn_allocations >= 2, `two peer connections hold allocations: ${m.trackmesh_turn_allocations}`);
    assert.ok(m['trackmesh_turn_relayed_bytes_total{direction="to_client"}'] > 0, 'media reached the clients through TURN');
    await page.evaluate(() => window.closeAll());
    return s;
  });
}

test('relay only: push and pull through the node\'s TURN server, video decoded', async (t) => {
  await relayedCall(t);
});

test('relay only over TCP: TURN on the TCP port alone carries the call', async (t) => {
  const s = await relayedCall(t, { only: 'transport=tcp' });
  assert.ok(s.sub.video.framesDecoded > 10);
});
