// TURN: a page with iceTransportPolicy "relay" and the credentials from generate-ice-servers pushes
// the fake camera + mic in one session and pulls them in another; every packet goes through the
// node's embedded TURN server, and the pulled video is decoded.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startNode, launchChromium, serveDir, pollUntil, withTimeout, explain, screenshotsOnFailure, freeUdpTcpPort, randomHex } from './lib.mjs';

const KEY = 'browserkey';
const KEY_SECRET = randomHex(16);
let node, browser, site;

before(async () => {
  node = await startNode({ extraArgs: ['--turn-key', `${KEY}:${KEY_SECRET}`, '--turn-port', String(await freeUdpTcpPort())] });
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

// The demo page's "force relay" checkbox: with the TURN key entered, the page asks
// generate-ice-servers for a credential and opens its publish and pull connections with
// iceTransportPolicy "relay", so every packet goes through the node's TURN server.
test('demo page "force relay": publish and pull through TURN, video decoded', async (t) => {
  await screenshotsOnFailure(browser, 'turn-demo-force-relay', () => explain(node, browser, async () => {
    const page = await browser.ctx.newPage();
    // Keep every RTCPeerConnection the page opens, to read its configuration and selected pair.
    await page.addInitScript(() => {
      const Original = window.RTCPeerConnection;
      window.__pcs = [];
      window.RTCPeerConnection = class extends Original {
        constructor(...args) { super(...args); window.__pcs.push(this); }
      };
    });
    await page.goto(`${node.origin}/`);
    const errorText = () => page.locator('#error').evaluate((el) => (el.classList.contains('show') ? el.textContent : ''));
    await page.locator('#appId').fill(node.appId);
    await page.locator('#appSecret').fill(node.secret);
    await page.locator('#turnKeyId').fill('');
    await page.locator('#turnKeySecret').fill('');
    await page.locator('#forceRelay').check();

    // Checked without a TURN key: a clear error, and no camera, session or connection opened.
    await page.locator('#publish').click();
    const shown = await pollUntil(errorText, { timeoutMs: 10000, what: 'an error for "force relay" without a TURN key' });
    assert.match(shown, /needs the TURN key id and secret/, shown);
    assert.equal(await page.evaluate(() => window.__pcs.length), 0, 'no PeerConnection opened');
    // A wrong TURN secret: the TURN API's 401 is shown.
    await pollUntil(() => page.locator('#publish').isEnabled(), { timeoutMs: 5000, what: '#publish enabled again' });
    await page.locator('#turnKeyId').fill(KEY);
    await page.locator('#turnKeySecret').fill('not-the-secret');
    await page.locator('#publish').click();
    await pollUntil(async () => /401[\s\S]*unauthorized/.test(await errorText(page)), { timeoutMs: 10000, what: 'the TURN API 401 on the page' })
      .catch(async (e) => { e.message += `\n#error: ${await errorText(page)}`; throw e; });
    assert.equal(await page.evaluate(() => window.__pcs.length), 0, 'no PeerConnection opened');

    await pollUntil(() => page.locator('#publish').isEnabled(), { timeoutMs: 5000, what: '#publish enabled again' });
    await page.locator('#turnKeySecret').fill(KEY_SECRET);
    await page.locator('#publish').click();
    await pollUntil(async () => /connected/.test(await page.locator('#pubStatus').textContent()) || await errorText(page),
      { timeoutMs: 30000, what: 'publish through TURN to connect (#pubStatus "connected")' });
    assert.equal(await errorText(page), '', 'no error shown after publish');
    const pubSession = (await page.locator('#pubSession').textContent()).trim();
    const videoName = (await page.locator('#pubTracks li[data-kind="video"] .track-name').textContent()).trim();
    await page.locator('#pullSession').fill(pubSession);
    await page.locator('#pullTrack').fill(videoName);
    await page.locator('#pull').click();
    const video = page.locator('#remoteVideos video');
    await pollUntil(async () => {
      if (await errorText(page)) throw new Error(`error shown after pull: ${await errorText(page)}`);
      if (await video.count() === 0) return false;
      return video.first().evaluate((v) => v.getVideoPlaybackQuality().totalVideoFrames > 10 && v.videoWidth > 0);
    }, { timeoutMs: 30000, what: 'the pulled video to decode frames through TURN' });

    // Both connections were made relay-only, and the pair each uses is a relayed one.
    const pcs = await page.evaluate(async () => Promise.all(window.__pcs.map(async (pc) => {
      const stats = [...(await pc.getStats()).values()];
      const byId = new Map(stats.map((s) => [s.id, s]));
      const transport = stats.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
      const pair = transport ? byId.get(transport.selectedCandidatePairId)
        : stats.find((s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded');
      const local = pair && byId.get(pair.localCandidateId);
      return { policy: pc.getConfiguration().iceTransportPolicy, state: pc.connectionState, local: local && local.candidateType, bytes: pair && pair.bytesReceived + pair.bytesSent };
    })));
    t.diagnostic(`connections: ${JSON.stringify(pcs)}`);
    assert.equal(pcs.length, 2, 'one publish and one pull connection');
    for (const pc of pcs) {
      assert.equal(pc.policy, 'relay', `iceTransportPolicy: ${JSON.stringify(pc)}`);
      assert.equal(pc.local, 'relay', `the selected pair's local candidate is relayed: ${JSON.stringify(pc)}`);
      assert.ok(pc.bytes > 0, `media on the relayed pair: ${JSON.stringify(pc)}`);
    }
    // The TURN key is kept like the app secret, and "Forget" removes it too.
    const kept = () => page.evaluate(() => [localStorage.getItem('trackmesh.turnKeyId'), localStorage.getItem('trackmesh.turnKeySecret')]);
    assert.deepEqual(await kept(), [KEY, KEY_SECRET]);
    await page.locator('#forget').click();
    assert.deepEqual(await kept(), [null, null]);
    assert.equal(await page.locator('#turnKeySecret').inputValue(), '');
    await page.close();
  }));
});
