// Two nodes of one cluster on 127.0.0.1: A (region "eu") and B (region "us", joins through A's gossip address).
// A page publishes the fake camera + mic to A with the raw Calls API; a second page pulls both into a session on B
// tracks (B relays them from A over QUIC); media must be decoded on B's session, and the admin API of both nodes
// must show the relay (B: upstream via A, A: downstream to B).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launchChromium, serveDir, pollUntil, withTimeout, randomHex, startTwoNodeCluster, explainNodes,
} from './lib.mjs';

const appId = randomHex(16);
const secret = randomHex(16);
const adminToken = randomHex(16);

let A, B, browser, site;

const explainAll = (fn) => explainNodes({ 'A (eu)': A, 'B (us)': B }, browser, fn);

before(async () => {
  ({ A, B } = await startTwoNodeCluster({ appId, secret, adminToken }));
  site = await serveDir();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await site?.close();
  await B?.stop();
  await A?.stop();
});

test('cluster: publish on node A (eu), pull on node B (us), media decoded through the relay', async (t) => {
  await explainAll(async () => {
    // ready lines carry the cluster fields
    for (const [n, region] of [[A, 'eu'], [B, 'us']]) {
      assert.equal(n.region, region, `ready line region: ${JSON.stringify(n.ready)}`);
      assert.match(n.tag ?? '', /^[0-9a-f]{8}$/, `ready line tag: ${JSON.stringify(n.ready)}`);
      assert.ok(n.node && n.gossip && n.relay, `ready line has node, gossip, relay: ${JSON.stringify(n.ready)}`);
    }
    assert.equal(A.gossip, B.args[B.args.indexOf('--seed') + 1]);

    // the admin API is guarded
    const unauth = await A.admin('/admin/cluster', { token: 'wrong' });
    assert.equal(unauth.status, 401, `/admin/cluster with a wrong token: ${JSON.stringify(unauth)}`);

    // both nodes see both members live (bounded)
    const tJoin = Date.now();
    for (const n of [A, B]) {
      await pollUntil(async () => {
        const r = await n.admin('/admin/cluster');
        if (r.status !== 200) return null;
        const live = (r.json.members || []).filter((m) => m.live);
        const a = live.find((m) => m.nodeId === A.node);
        const b = live.find((m) => m.nodeId === B.node);
        return r.json.self === n.node && a?.region === 'eu' && b?.region === 'us' && a.tag === A.tag && b.tag === B.tag ? r : null;
      }, { timeoutMs: 15000, intervalMs: 100, what: `node ${n.node}'s /admin/cluster to list ${A.node} (eu) and ${B.node} (us) live` })
        .catch(async (e) => { e.message += `\nlast /admin/cluster: ${JSON.stringify((await n.admin('/admin/cluster')).json)}`; throw e; });
    }
    t.diagnostic(`both nodes list both members live after ${Date.now() - tJoin} ms`);

    const { page } = browser;
    await page.goto(`${site.origin}/raw.html`);
    const cfgA = { base: A.base, secret };
    const cfgB = { base: B.base, secret };

    const pub = await withTimeout(page.evaluate((cfg) => window.publish(cfg), cfgA), 30000, 'publish to node A');
    assert.equal(pub.sessionId.slice(0, 8), A.tag, `publisher session ${pub.sessionId} is owned by A (tag ${A.tag})`);
    assert.deepEqual(pub.tracks.map((x) => x.kind).sort(), ['audio', 'video']);

    await pollUntil(async () => {
      const s = await page.evaluate(() => window.stats());
      return s.pub.video.packetsSent > 0 && s.pub.audio.packetsSent > 0;
    }, { timeoutMs: 10000, what: 'publisher outbound packets' });

    // The viewer is a second page, as a person on another machine would be.
    const viewer = await browser.ctx.newPage();
    await viewer.goto(`${site.origin}/raw.html`);
    const remote = pub.tracks.map((x) => ({ sessionId: pub.sessionId, trackName: x.trackName }));
    const pull = await withTimeout(viewer.evaluate(([cfg, remote]) => window.pull(cfg, remote), [cfgB, remote]),
      30000, 'pull on node B (sessions/new, tracks/new, renegotiate)');
    assert.equal(pull.sessionId.slice(0, 8), B.tag, `subscriber session ${pull.sessionId} is owned by B (tag ${B.tag})`);

    const s = await pollUntil(async () => {
      const s = await viewer.evaluate(() => window.stats());
      return s.sub.video.framesDecoded > 0 && s.sub.audio.packetsReceived > 0 && s.sub.timing.firstDecodedMs !== undefined ? s : null;
    }, { timeoutMs: 15000, intervalMs: 100, what: "pulled video framesDecoded > 0 and audio packetsReceived > 0 on B's session" })
      .catch(async (e) => {
        const s = await viewer.evaluate(() => window.stats());
        e.message += `\nstats: ${JSON.stringify(s, null, 1)}`;
        e.message += `\nB /admin/relay: ${JSON.stringify((await B.admin('/admin/relay')).json)}`;
        e.message += `\nA /admin/relay: ${JSON.stringify((await A.admin('/admin/relay')).json)}`;
        throw e;
      });
    const tm = s.sub.timing;
    t.diagnostic(`cross-node (A eu -> B us) pull request -> first decoded frame: ${tm.firstDecodedMs} ms (getStats, 10 ms polling); ` +
      `requestVideoFrameCallback: ${tm.firstFrameCallbackMs ?? 'n/a'} ms; tracks/new answered at ${tm.tracksNewMs} ms, renegotiate at ${tm.renegotiateMs} ms; ` +
      `codecs ${s.sub.video.codec} + ${s.sub.audio.codec}; pair ${s.sub.pair?.local} -> ${s.sub.pair?.remote}`);

    // media keeps flowing
    const later = await pollUntil(async () => {
      const x = await viewer.evaluate(() => window.stats());
      return x.sub.video.framesDecoded >= s.sub.video.framesDecoded + 10 ? x : null;
    }, { timeoutMs: 10000, what: 'at least 10 more decoded frames on B' });
    assert.ok(later.sub.audio.packetsReceived > s.sub.audio.packetsReceived, 'audio packets keep arriving on B');

    // B pulls both tracks from A (upstream via A), A sends both to B (downstream to B), frames counted on both
    const same = (x, r) => x.sessionId === r.sessionId && x.trackName === r.trackName;
    const relays = await pollUntil(async () => {
      const rb = await B.admin('/admin/relay');
      const ra = await A.admin('/admin/relay');
      if (rb.status !== 200 || ra.status !== 200) return null;
      const up = remote.map((r) => (rb.json.upstream || []).find((x) => same(x, r) && x.via === A.node));
      const down = remote.map((r) => (ra.json.downstream || []).find((x) => same(x, r) && x.peer === B.node));
      return up.every((x) => x?.frames > 0) && down.every((x) => x?.frames > 0) ? { rb: rb.json, ra: ra.json } : null;
    }, { timeoutMs: 5000, intervalMs: 100, what: "B's /admin/relay upstream via A and A's downstream to B for both pulled tracks, frames > 0" })
      .catch(async (e) => {
        e.message += `\nB /admin/relay: ${JSON.stringify((await B.admin('/admin/relay')).json)}`;
        e.message += `\nA /admin/relay: ${JSON.stringify((await A.admin('/admin/relay')).json)}`;
        throw e;
      });
    t.diagnostic(`B upstream: ${JSON.stringify(relays.rb.upstream)}; A downstream: ${JSON.stringify(relays.ra.downstream)}`);

    // B lists the pulled tracks as active on its session
    const g = await B.api('GET', `/sessions/${pull.sessionId}`);
    assert.equal(g.status, 200, `GET B session: ${JSON.stringify(g.json)}`);
    const active = (g.json.tracks || []).filter((x) => x.status === 'active');
    assert.equal(active.length, 2, `B's session lists 2 active tracks: ${JSON.stringify(g.json)}`);

    await viewer.evaluate(() => window.closeAll());
    await page.evaluate(() => window.closeAll());
  });
});
