// DataChannels as Calls defines them, in Chromium, across two nodes of one cluster (A and C): a page
// publishes channel "chat" on A; subscribers on A and on C open negotiated channels with the ids the
// API returned. Messages arrive in order on both nodes; the canReply subscriber on C reaches the
// publisher, the other subscriber does not; waitForAck swallows the first message of the C subscriber.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startNode, launchChromium, serveDir, pollUntil, withTimeout, randomHex, tail,
} from './lib.mjs';

const appId = randomHex(16);
const secret = randomHex(16);
const clusterSecret = randomHex(16);
const adminToken = randomHex(16);

let A, C, browser, site;

async function explainAll(fn) {
  try {
    return await fn();
  } catch (e) {
    const extra = [];
    if (browser?.logs?.length) extra.push(`--- page console (last 30) ---\n${browser.logs.slice(-30).join('\n')}`);
    for (const [name, n] of [['A', A], ['C', C]]) {
      if (n) extra.push(`--- node ${name} stderr (last 30 lines) ---\n${tail(n.stderr(), 30)}`);
    }
    e.message = `${e.message}\n${extra.join('\n')}`;
    throw e;
  }
}

before(async () => {
  const common = (gossipPort) => [
    '--region', 'eu', '--gossip', `127.0.0.1:${gossipPort}`, '--relay', '127.0.0.1:0',
    '--cluster-secret', clusterSecret,
  ];
  A = await startNode({ appId, secret, adminToken, extraArgs: (g) => [...common(g), '--node-id', `a-${randomHex(4)}`] });
  C = await startNode({
    appId, secret, adminToken,
    extraArgs: (g) => [...common(g), '--node-id', `c-${randomHex(4)}`, '--seed', A.gossip],
  });
  site = await serveDir();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await site?.close();
  await C?.stop();
  await A?.stop();
});

test('datachannels: publisher on A, subscribers on A and C, in order; canReply; waitForAck', async () => {
  await explainAll(async () => {
    // C must see A live before it can route to A's sessions.
    await pollUntil(async () => {
      const r = await C.admin('/admin/cluster');
      return (r.json?.members || []).some((m) => m.live && m.nodeId === A.node) ? r : null;
    }, { timeoutMs: 15000, what: 'node C lists A live' });

    const { page } = browser;
    await page.goto(`${site.origin}/dc.html`);
    const cfgA = { base: A.base, secret };
    const cfgC = { base: C.base, secret };
    const ev = (fn, ...args) => page.evaluate(fn, ...args);

    const pub = await withTimeout(ev(([c]) => window.establish('pub', c), [cfgA]), 30000, 'publisher establish');
    assert.equal(pub.requiresImmediateRenegotiation, true);
    assert.equal(pub.serverEventsId, 0, 'server-events is id 0');
    const subA = await withTimeout(ev(([c]) => window.establish('subA', c), [cfgA]), 30000, 'subscriber on A establish');
    const subC = await withTimeout(ev(([c]) => window.establish('subC', c), [cfgC]), 30000, 'subscriber on C establish');

    const pubId = await ev(() => window.openChannel('pub', { location: 'local', dataChannelName: 'chat' }));
    assert.equal(pubId, 1, 'the first channel of a session gets id 1');
    const idA = await ev(([s]) => window.openChannel('subA', { location: 'remote', sessionId: s, dataChannelName: 'chat' }), [pub.sessionId]);
    const idC = await ev(([s]) => window.openChannel('subC', {
      location: 'remote', sessionId: s, dataChannelName: 'chat', canReply: true, waitForAck: true,
    }), [pub.sessionId]);
    assert.equal(idA, 1);
    assert.equal(idC, 1);

    // waitForAck: the C subscriber's first message is the ack, swallowed; messages flow to it after.
    await ev(() => window.sendOn('subC', 'chat', ['ack']));
    await pollUntil(async () => {
      await ev(() => window.sendOn('pub', 'chat', ['probe']));
      const got = await ev(() => window.received('subC', 'chat'));
      return got.includes('probe') ? got : null;
    }, { timeoutMs: 15000, intervalMs: 200, what: 'the C subscriber receives after its ack' });
    await ev(() => { window.clearReceived('subA', 'chat'); window.clearReceived('subC', 'chat'); });
    // Probes still in flight are left out below.

    const n = 300;
    const want = Array.from({ length: n }, (_, i) => `m${i}`);
    await ev(([w]) => window.sendOn('pub', 'chat', w), [want]);
    for (const key of ['subA', 'subC']) {
      const got = await pollUntil(async () => {
        const g = (await ev(([k]) => window.received(k, 'chat'), [key])).filter((m) => m !== 'probe');
        return g.length >= n ? g : null;
      }, { timeoutMs: 15000, what: `${n} messages on ${key}` });
      assert.deepEqual(got, want, `${key} gets every message in order`);
    }

    // canReply: only the C subscriber reaches the publisher; the ack never did.
    await ev(() => window.sendOn('subA', 'chat', ['from A, not allowed']));
    await ev(() => window.sendOn('subC', 'chat', ['reply from C']));
    const replies = await pollUntil(async () => {
      const g = await ev(() => window.received('pub', 'chat'));
      return g.length ? g : null;
    }, { timeoutMs: 10000, what: 'a reply at the publisher' });
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await ev(() => window.received('pub', 'chat')), ['reply from C'], `replies: ${JSON.stringify(replies)}`);

    // GET session lists the channels
    const g = await C.api('GET', `/sessions/${subC.sessionId}`);
    assert.equal(g.status, 200);
    assert.deepEqual(g.json.dataChannels, [{
      location: 'remote', sessionId: pub.sessionId, dataChannelName: 'chat', id: 1, status: 'active',
    }]);
    void subA;
  });
});
