// The node's own demo page at `/`, driven like a person: type the app id and secret, click Publish,
// read the session id and track names, fill the Pull form, click Pull, see the video play.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { startNode, launchChromium, pollUntil, explain, screenshotsOnFailure, OUT } from './lib.mjs';

let node, browser;

before(async () => {
  node = await startNode();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await node?.stop();
});

const errorText = (page) => page.locator('#error').evaluate((el) => (el.classList.contains('show') ? el.textContent : ''));

test('demo page: publish camera + mic, pull the video and the audio, close', async (t) => {
  await explain(node, browser, async () => {
    const { page } = browser;
    const res = await page.goto(`${node.origin}/`);
    assert.equal(res.status(), 200, 'GET / answers 200');
    assert.match(res.headers()['content-type'] || '', /text\/html/, 'GET / is HTML');
    const html = await res.text();
    assert.doesNotMatch(html, /(src|href)=["']?(https?:)?\/\//i, 'the demo page loads nothing from other hosts');

    // a wrong secret: the API error is shown on the page
    await page.locator('#appId').fill(node.appId);
    await page.locator('#appSecret').fill('not-the-secret');
    await page.locator('#publish').click();
    await pollUntil(async () => /unauthorized/.test(await errorText(page)), { timeoutMs: 10000, what: '#error to show errorCode unauthorized for a wrong secret' })
      .catch(async (e) => { e.message += `\n#error: ${await errorText(page)}\n#log: ${await page.locator('#log').textContent()}`; throw e; });
    await pollUntil(() => page.locator('#publish').isEnabled(), { timeoutMs: 5000, what: '#publish enabled again' });

    // the right secret
    await page.locator('#appSecret').fill('');
    await page.locator('#appSecret').pressSequentially(node.secret);
    await page.locator('#publish').click();
    await pollUntil(async () => /connected/.test(await page.locator('#pubStatus').textContent()) || await errorText(page),
      { timeoutMs: 15000, what: 'publish to connect (#pubStatus "connected")' });
    assert.equal(await errorText(page), '', 'no error shown after publish');
    const pubSession = (await page.locator('#pubSession').textContent()).trim();
    assert.match(pubSession, /^[0-9a-f]{32}$/, `#pubSession shows a session id: "${pubSession}"`);
    const names = {};
    for (const kind of ['video', 'audio']) {
      names[kind] = (await page.locator(`#pubTracks li[data-kind="${kind}"] .track-name`).textContent()).trim();
      assert.ok(names[kind], `#pubTracks shows the ${kind} track name`);
    }

    // pull the video: session id and track name in their fields
    await page.locator('#pullSession').fill(pubSession);
    await page.locator('#pullTrack').fill(names.video);
    const tPull = Date.now();
    await page.locator('#pull').click();
    const video = page.locator('#remoteVideos video');
    const q = await pollUntil(async () => {
      if (await errorText(page)) return { error: await errorText(page) };
      if (await video.count() === 0) return null;
      const v = await video.first().evaluate((v) => ({ frames: v.getVideoPlaybackQuality().totalVideoFrames, w: v.videoWidth, h: v.videoHeight, time: v.currentTime }));
      return v.frames > 0 && v.w > 0 ? v : null;
    }, { timeoutMs: 15000, intervalMs: 50, what: 'the pulled video element to show decoded frames' })
      .catch(async (e) => { e.message += `\n#log:\n${await page.locator('#log').textContent()}`; throw e; });
    assert.equal(q.error, undefined, `no error shown after pull: ${q.error}`);
    const firstFrameMs = Date.now() - tPull;
    t.diagnostic(`demo: click Pull -> first video frame presented ${firstFrameMs} ms (playwright polling, 50 ms); ${q.w}x${q.h}`);
    // currentTime advances
    await pollUntil(async () => (await video.first().evaluate((v) => v.currentTime)) > q.time + 0.5,
      { timeoutMs: 10000, what: 'pulled video currentTime to advance by 0.5 s' });

    // pull the audio: paste "sessionId/trackName" into the session field
    await page.locator('#pullTrack').fill('');
    await page.locator('#pullSession').fill(`${pubSession}/${names.audio}`);
    await page.locator('#pull').click();
    const audioCard = page.locator('#remoteVideos .card[data-kind="audio"]');
    await pollUntil(async () => {
      if (await errorText(page)) throw new Error(`error shown after audio pull: ${await errorText(page)}`);
      return (await audioCard.count()) > 0 && Number(await audioCard.first().getAttribute('data-packets')) > 0;
    }, { timeoutMs: 15000, what: 'the pulled audio card to count received packets' });
    assert.equal(await page.locator('#pullSession').inputValue(), pubSession, 'pasted "id/name" is split into the two fields');
    assert.equal(await page.locator('#pullTrack').inputValue(), names.audio);

    fs.mkdirSync(OUT, { recursive: true });
    await page.screenshot({ path: path.join(OUT, 'demo.png'), fullPage: true });

    // close: the audio pull alone (SDP close, force:false), then all pulls (force:true), then the publication
    await audioCard.first().locator('button.close').click();
    await pollUntil(async () => (await audioCard.count()) === 0 || await errorText(page), { timeoutMs: 10000, what: 'audio card removed after its close button' });
    assert.equal(await errorText(page), '', 'no error shown after closing the audio pull');
    assert.ok(await video.first().evaluate((v) => v.getVideoPlaybackQuality().totalVideoFrames) > q.frames, 'video still plays after closing the audio pull');
    await page.locator('#closePulls').click();
    await pollUntil(async () => (await page.locator('#remoteVideos .card').count()) === 0, { timeoutMs: 10000, what: 'pulled cards removed after "Close all pulls"' });
    assert.equal(await errorText(page), '', 'no error shown after closing the pulls');
    await page.locator('#unpublish').click();
    await pollUntil(async () => /not publishing/.test(await page.locator('#pubStatus').textContent()), { timeoutMs: 10000, what: '#pubStatus "not publishing"' });
    assert.equal(await errorText(page), '', 'no error shown after stopping the publication');
    const log = await page.locator('#log').textContent();
    assert.match(log, new RegExp(`PUT /sessions/${pubSession}/tracks/close -> 200`), 'the page closed its published tracks');
    // the page closes its PeerConnection right after the close call: the session lists its tracks as
    // inactive, or is already gone (410 session_error, as the contract says for a closed session)
    const g = await node.api('GET', `/sessions/${pubSession}`);
    if (g.status === 200) {
      assert.ok(g.json.tracks?.length === 2 && g.json.tracks.every((x) => x.status === 'inactive'),
        `published tracks inactive after "Stop publishing": ${JSON.stringify(g.json)}`);
    } else {
      assert.deepEqual([g.status, g.json.errorCode], [410, 'session_error'], `GET session after "Stop publishing": ${JSON.stringify(g.json)}`);
    }
  });
});

test('demo page: each bad pull says what is wrong and opens no session; audio-only publish; the picker; mute; forget', async () => {
  await screenshotsOnFailure(browser, 'demo-pulls', () => explain(node, browser, async () => {
    const page = await browser.ctx.newPage();
    await page.goto(`${node.origin}/`);
    assert.doesNotMatch(await page.locator('#appId').getAttribute('placeholder'), /hex/, 'the app id placeholder does not claim a format');
    // the first test typed them: this origin remembers them in a new tab
    assert.equal(await page.locator('#appId').inputValue(), node.appId, 'the app id is remembered for this origin');
    assert.equal(await page.locator('#appSecret').inputValue(), node.secret, 'the secret is remembered for this origin');
    assert.match(await page.locator('#devWarning').textContent(), /Development only/);
    const ids = async () => {
      const r = await node.api('GET', '/sessions');
      assert.equal(r.status, 200, JSON.stringify(r.json));
      return r.json.sessions.map((s) => s.sessionId);
    };
    const before = await ids();

    const pullFails = async (session, track, message, what) => {
      await page.locator('#pullSession').fill(session);
      await page.locator('#pullTrack').fill(track);
      await page.locator('#pull').click();
      const shown = await pollUntil(() => errorText(page), { timeoutMs: 10000, what: `an error for ${what}` });
      assert.match(shown, message, `${what}: ${shown}`);
      await pollUntil(() => page.locator('#pull').isEnabled(), { timeoutMs: 5000, what: '#pull enabled again' });
    };
    await pullFails('hello world', 'cam', /"hello world" is not a session id/, 'a malformed id');
    await pullFails('0123456789abcdef0123456789abcdef', 'cam', /No session 0123456789abcdef0123456789abcdef in this app/, 'an unknown session');

    // audio only: no camera
    await page.locator('#camera').selectOption('none');
    await page.locator('#publish').click();
    await pollUntil(async () => /connected/.test(await page.locator('#pubStatus').textContent()) || await errorText(page),
      { timeoutMs: 15000, what: 'the audio-only publish to connect' });
    assert.equal(await errorText(page), '');
    const pubSession = (await page.locator('#pubSession').textContent()).trim();
    assert.deepEqual(await page.locator('#pubTracks li').evaluateAll((els) => els.map((e) => e.dataset.kind)), ['audio'], 'audio only: one audio track');
    const audioName = (await page.locator('#pubTracks li .track-name').textContent()).trim();
    await pullFails(pubSession, 'nope', new RegExp(`publishes no track named "nope"\\. It publishes: ${audioName}`), 'a wrong track name');
    // none of the failed pulls left a session behind: the only new session is the publisher's
    assert.deepEqual((await ids()).filter((id) => !before.includes(id)), [pubSession], 'failed pulls open no session');

    // the picker lists the audio track; one click pulls it
    await page.locator('#refreshLive').click();
    const pick = page.locator(`#live li[data-session-id="${pubSession}"][data-track-name="${audioName}"] button.pick`);
    await pollUntil(async () => (await pick.count()) === 1, { timeoutMs: 10000, what: 'the picker to list the audio track' });
    await pick.click();
    const card = page.locator('#remoteVideos .card[data-kind="audio"]');
    await pollUntil(async () => (await card.count()) === 1 && Number(await card.getAttribute('data-packets')) > 0,
      { timeoutMs: 15000, what: 'the picked audio track to receive packets' });
    assert.equal(await errorText(page), '');

    // mute
    await page.locator('#muteMic').click();
    assert.equal(await page.locator('#muteMic').textContent(), 'Unmute microphone');
    assert.equal(await page.evaluate(() => window.trackmeshDemo.pub.tracks[0].track.enabled), false, 'muting disables the published track');

    await page.locator('#closePulls').click();
    await page.locator('#unpublish').click();
    await pollUntil(async () => /not publishing/.test(await page.locator('#pubStatus').textContent()), { timeoutMs: 10000, what: 'stopped' });

    // forget: gone from the page and from this origin's storage
    await page.locator('#forget').click();
    assert.equal(await page.locator('#appSecret').inputValue(), '');
    assert.deepEqual(await page.evaluate(() => [localStorage.getItem('trackmesh.appId'), localStorage.getItem('trackmesh.appSecret')]), [null, null]);
    await page.close();
  }));
});
