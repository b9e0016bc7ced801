// HTTPS without a proxy: a node started with a self-signed certificate (`--tls-cert`/`--tls-key`)
// serves the demo page at https://127.0.0.1:PORT/; Chromium trusts exactly that certificate (its
// SPKI hash in --ignore-certificate-errors-spki-list), publishes the fake camera and pulls the video
// back over the page's own HTTPS origin.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { startNode, launchChromium, pollUntil, explain, screenshotsOnFailure, selfSignedCert, withTimeout } from './lib.mjs';

let node, browser, cert;

before(async () => {
  cert = selfSignedCert();
  node = await startNode({ tls: cert });
  browser = await launchChromium({ extraArgs: [`--ignore-certificate-errors-spki-list=${cert.spki}`] });
});

after(async () => {
  await browser?.close();
  await node?.stop();
  if (cert) fs.rmSync(cert.dir, { recursive: true, force: true });
});

const errorText = (page) => page.locator('#error').evaluate((el) => (el.classList.contains('show') ? el.textContent : ''));

test('https: the ready line says scheme=https and plain HTTP gets no page', async () => {
  assert.equal(node.ready.scheme, 'https', `ready line: ${JSON.stringify(node.ready)}`);
  assert.match(node.origin, /^https:\/\/127\.0\.0\.1:\d+$/);
  const health = await withTimeout(node.fetch(`${node.origin}/healthz`), 10000, 'GET /healthz over HTTPS');
  assert.equal(health.status, 200, 'the test process reaches the node over TLS, trusting only this certificate');
  // The same port does not answer plain HTTP with a page.
  const plain = await withTimeout(fetch(`http://${node.http}/`).then((r) => r.status, (e) => e.message), 10000, 'GET / over plain HTTP');
  assert.notEqual(plain, 200, 'plain HTTP is not served');
});

test('https: the demo page publishes the camera and pulls it back, video decoded', async (t) => {
  await screenshotsOnFailure(browser, 'https-demo', () => explain(node, browser, async () => {
    const { page } = browser;
    const res = await page.goto(`${node.origin}/`);
    assert.equal(res.status(), 200, 'GET / over HTTPS answers 200');
    const sec = await page.evaluate(() => ({ protocol: location.protocol, secure: window.isSecureContext }));
    assert.deepEqual(sec, { protocol: 'https:', secure: true }, 'the page runs on a secure HTTPS origin');
    const tlsInfo = await res.securityDetails();
    t.diagnostic(`TLS: ${tlsInfo?.protocol} issuer ${tlsInfo?.issuer}`);
    assert.equal(tlsInfo?.subjectName, '127.0.0.1', 'Chromium was shown the node\'s certificate');

    await page.locator('#appId').fill(node.appId);
    await page.locator('#appSecret').fill(node.secret);
    await page.locator('#publish').click();
    await pollUntil(async () => /connected/.test(await page.locator('#pubStatus').textContent()) || await errorText(page),
      { timeoutMs: 15000, what: 'publish to connect (#pubStatus "connected")' });
    assert.equal(await errorText(page), '', 'no error shown after publish');
    const pubSession = (await page.locator('#pubSession').textContent()).trim();
    assert.match(pubSession, /^[0-9a-f]{32}$/, `#pubSession shows a session id: "${pubSession}"`);
    const videoName = (await page.locator('#pubTracks li[data-kind="video"] .track-name').textContent()).trim();

    await page.locator('#pullSession').fill(pubSession);
    await page.locator('#pullTrack').fill(videoName);
    await page.locator('#pull').click();
    const video = page.locator('#remoteVideos video');
    const q = await pollUntil(async () => {
      if (await errorText(page)) return { error: await errorText(page) };
      if (await video.count() === 0) return null;
      const v = await video.first().evaluate((v) => ({ frames: v.getVideoPlaybackQuality().totalVideoFrames, w: v.videoWidth, time: v.currentTime }));
      return v.frames > 0 && v.w > 0 ? v : null;
    }, { timeoutMs: 15000, intervalMs: 50, what: 'the pulled video element to show decoded frames' })
      .catch(async (e) => { e.message += `\n#log:\n${await page.locator('#log').textContent()}`; throw e; });
    assert.equal(q.error, undefined, `no error shown after pull: ${q.error}`);
    await pollUntil(async () => (await video.first().evaluate((v) => v.currentTime)) > q.time + 0.5,
      { timeoutMs: 10000, what: 'pulled video currentTime to advance by 0.5 s' });

    // The API the page called is the node's own HTTPS origin.
    const s = await node.api('GET', `/sessions/${pubSession}`);
    assert.equal(s.status, 200, JSON.stringify(s.json));
    assert.ok(s.json.tracks.some((x) => x.trackName === videoName && x.status === 'active'), JSON.stringify(s.json));
  }));
});
