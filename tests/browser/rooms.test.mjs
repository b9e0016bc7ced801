// The demo page's rooms panel: a room and two tickets made with the API by the test (as an app's
// backend would), two pages that know neither the app id nor its secret join the room by ticket
// through the panel (WebSocket signalling, the node makes the offers), and each decodes the
// other's video.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startNode, launchChromium, pollUntil, explain, screenshotsOnFailure } from './lib.mjs';

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

/**
 * The most frames any received video of the page decoded (its own preview is muted and has no
 * controls; the panel adds a video element per received video track).
 */
const remoteFrames = (page) => page.evaluate(() => Math.max(0, ...[...document.querySelectorAll('#roomVideos video[controls]')]
  .filter((v) => v.videoWidth > 0)
  .map((v) => v.getVideoPlaybackQuality().totalVideoFrames)));

async function ticket(room) {
  const r = await node.api('POST', `/rooms/${room}/tickets`, { direction: 'both' });
  assert.equal(r.status, 201, `POST tickets: ${JSON.stringify(r.json)}`);
  assert.match(r.json.url, /^ws:\/\/127\.0\.0\.1:\d+\/v1\/ws$/, 'the ticket names this node\'s WebSocket');
  return r.json.access_token;
}

async function join(page, name, room, token) {
  await page.goto(`${node.origin}/`);
  await page.locator('#roomId').fill(room);
  await page.locator('#roomRole').selectOption('sendrecv');
  await page.locator('#roomTicket').fill(token);
  await page.locator('#roomJoin').click();
  await pollUntil(async () => {
    const err = await errorText(page);
    if (err) throw new Error(`${name}: error shown on join: ${err}`);
    return /in room/.test(await page.locator('#roomStatus').textContent());
  }, { timeoutMs: 15000, what: `${name} to join room ${room} by ticket` })
    .catch(async (e) => { e.message += `\n#log:\n${await page.locator('#log').textContent()}`; throw e; });
}

test('rooms panel: two pages join a room by ticket and each decodes the other\'s video', async (t) => {
  await screenshotsOnFailure(browser, 'rooms-panel', () => explain(node, browser, async () => {
    const created = await node.api('POST', '/rooms', { id: 'panel' });
    assert.equal(created.status, 201, `POST rooms: ${JSON.stringify(created.json)}`);
    const [ta, tb] = [await ticket('panel'), await ticket('panel')];

    const a = browser.page;
    const b = await browser.ctx.newPage();
    await join(a, 'a', 'panel', ta);
    await join(b, 'b', 'panel', tb);
    assert.equal(await a.locator('#appSecret').inputValue(), '', 'the pages joined with no app secret');

    // Each page: a received video with decoded frames (b gets a's tracks at once; a gets an
    // update when b publishes), and its frame count goes on growing. In a room of two, what a
    // page receives is the other's.
    const t0 = Date.now();
    const first = {};
    for (const [name, page] of [['a', a], ['b', b]]) {
      first[name] = await pollUntil(async () => {
        const err = await errorText(page);
        if (err) throw new Error(`${name}: error shown: ${err}`);
        const frames = await remoteFrames(page);
        return frames > 0 ? frames : null;
      }, { timeoutMs: 20000, intervalMs: 100, what: `${name} to decode the other page's video` })
        .catch(async (e) => {
          e.message += `\n${name} #log:\n${await page.locator('#log').textContent()}`;
          throw e;
        });
    }
    t.diagnostic(`rooms panel: both pages decode the other's video ${Date.now() - t0} ms after the second join`);
    for (const [name, page] of [['a', a], ['b', b]]) {
      await pollUntil(async () => (await remoteFrames(page)) > first[name] + 30,
        { timeoutMs: 15000, what: `${name}'s received video to keep decoding frames` });
    }

    // Each page shows the other participant once: one video element and one audio element.
    for (const [name, page] of [['a', a], ['b', b]]) {
      const shown = await page.evaluate(() => ({
        videos: document.querySelectorAll('#roomVideos video[controls]').length,
        audios: document.querySelectorAll('#roomVideos audio').length,
      }));
      assert.deepEqual(shown, { videos: 1, audios: 1 }, `${name} shows the other participant once`);
    }

    const room = await node.api('GET', '/rooms/panel');
    assert.equal(room.status, 200, JSON.stringify(room.json));
    assert.equal(room.json.onair, true, `the room is on air: ${JSON.stringify(room.json)}`);

    // Leave works from the panel.
    await b.locator('#roomLeave').click();
    await pollUntil(async () => /not in a room/.test(await b.locator('#roomStatus').textContent()),
      { timeoutMs: 10000, what: 'b to leave' });
    await b.close();
  }));
});
