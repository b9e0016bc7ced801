// What the demo page (/) and the meeting view (/meet) share: the app settings kept per origin,
// the Calls API client, and live WebRTC stats. Plain JS, no build step; served at /demo/common.js.
'use strict';
(function () {
  const $ = (s) => document.querySelector(s);
  const t0 = performance.now();

  function log(msg) {
    const el = $('#log');
    const line = `${((performance.now() - t0) / 1000).toFixed(2).padStart(7)}s  ${msg}`;
    if (el) {
      // bounded: keep the last 500 lines
      const lines = (el.textContent + line + '\n').split('\n');
      el.textContent = lines.slice(-501).join('\n');
      el.scrollTop = el.scrollHeight;
    }
    console.log('[trackmesh]', msg);
  }
  function showError(msg) {
    const el = $('#error');
    el.textContent = msg;
    el.classList.add('show');
    log('ERROR ' + msg);
  }
  function clearError() { const el = $('#error'); el.textContent = ''; el.classList.remove('show'); }

  class ApiError extends Error {
    constructor(msg, status, errorCode, errorDescription) { super(msg); this.status = status; this.errorCode = errorCode; this.errorDescription = errorDescription; }
  }

  // ---- the app id and secret, kept per origin in localStorage (development only) ----
  // The TURN key (id and secret) is kept the same way, for the "force relay" checkbox.
  const KEYS = ['appId', 'appSecret', 'apiBase', 'turnKeyId', 'turnKeySecret'];
  const store = (() => { try { return window.localStorage; } catch (_) { return null; } })();
  function bindSettings() {
    for (const id of KEYS) {
      const el = $('#' + id);
      if (!el) continue;
      try { const v = store && store.getItem('trackmesh.' + id); if (v) el.value = v; } catch (_) { /* storage disabled */ }
      el.addEventListener('input', () => { try { if (store) store.setItem('trackmesh.' + id, el.value.trim()); } catch (_) { /* ignore */ } });
    }
    const base = $('#apiBase');
    if (base) base.placeholder = `${location.origin}/v1/apps/{appId}`;
    const forget = $('#forget');
    if (forget) {
      forget.addEventListener('click', () => {
        for (const id of KEYS) {
          try { if (store) store.removeItem('trackmesh.' + id); } catch (_) { /* ignore */ }
          const el = $('#' + id); if (el) el.value = '';
        }
        log(`forgot the app id, secret and TURN key stored for ${location.origin}`);
      });
    }
    // another tab of this origin changed them: follow
    window.addEventListener('storage', (e) => {
      const id = e.key && e.key.startsWith('trackmesh.') ? e.key.slice(10) : null;
      if (id && KEYS.includes(id) && $('#' + id)) $('#' + id).value = e.newValue || '';
    });
  }
  function hasSettings() { return !!($('#appId').value.trim() && $('#appSecret').value.trim()); }
  function config() {
    const appId = $('#appId').value.trim();
    const secret = $('#appSecret').value.trim();
    if (!appId) throw new Error('Enter the app id first (the node prints it when it starts).');
    if (!secret) throw new Error('Enter the app secret first.');
    let base = ($('#apiBase') ? $('#apiBase').value.trim() : '').replace(/\/+$/, '');
    if (!base) base = `${location.origin}/v1/apps/${encodeURIComponent(appId)}`;
    else if (base.includes('{appId}')) base = base.replace('{appId}', encodeURIComponent(appId));
    return { base, secret };
  }

  // ---- the Calls API ----
  async function api(method, path, body, { quiet = false } = {}) {
    const cfg = config();
    let res;
    try {
      res = await fetch(cfg.base + path, {
        method,
        headers: { 'Authorization': `Bearer ${cfg.secret}`, 'Content-Type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(`${method} ${path}: request failed (${e.message})`, 0);
    }
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : {}; } catch (_) { /* not JSON */ }
    if (json === null) throw new ApiError(`${method} ${path}: HTTP ${res.status}, response is not JSON: ${text.slice(0, 200)}`, res.status);
    if (!quiet || !res.ok) log(`${method} ${path} -> ${res.status}${json.errorCode ? ' ' + json.errorCode : ''}`);
    if (!res.ok || json.errorCode) {
      throw new ApiError(`${method} ${path}: HTTP ${res.status}\nerrorCode: ${json.errorCode || '(none)'}\nerrorDescription: ${json.errorDescription || '(none)'}`,
        res.status, json.errorCode, json.errorDescription);
    }
    return json;
  }
  function itemErrors(what, items) {
    const bad = (items || []).filter((t) => t.errorCode);
    if (bad.length) {
      throw new ApiError(`${what}: ` + bad.map((t) => `${t.trackName || t.mid}: errorCode ${t.errorCode}: ${t.errorDescription || ''}`).join('\n'), 200, bad[0].errorCode, bad[0].errorDescription);
    }
  }
  /** Closes `mids` of a session without an SDP exchange, even while the page unloads. */
  function closeOnUnload(sessionId, mids) {
    if (!sessionId || !mids.length) return;
    try {
      const cfg = config();
      fetch(`${cfg.base}/sessions/${sessionId}/tracks/close`, {
        method: 'PUT', keepalive: true,
        headers: { 'Authorization': `Bearer ${cfg.secret}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ tracks: mids.map((mid) => ({ mid })), force: true }),
      }).catch(() => {});
    } catch (_) { /* no settings: nothing to close with */ }
  }

  const SESSION_ID = /^[0-9a-f]{32}$/;

  /**
   * Why pulling `trackName` of `sessionId` cannot work, in words, or null when the session lists it
   * as active. Asks `GET sessions/{id}` first, so a pull that would fail creates no session.
   */
  async function whyNotPullable(sessionId, trackName) {
    if (!SESSION_ID.test(sessionId)) {
      return `"${sessionId}" is not a session id: session ids are 32 lowercase hex characters (the publisher's page shows its id and a share link).`;
    }
    let s;
    try {
      s = await api('GET', `/sessions/${sessionId}`);
    } catch (e) {
      if (e.status === 404) return `No session ${sessionId} in this app: it never existed here, or it belongs to another app.`;
      if (e.status === 410) return `Session ${sessionId} has ended: its publisher left.`;
      throw e;
    }
    const published = (s.tracks || []).filter((t) => t.location === 'local');
    const t = published.find((x) => x.trackName === trackName);
    const live = published.filter((x) => x.status === 'active').map((x) => x.trackName);
    if (!t) {
      return `Session ${sessionId} publishes no track named "${trackName}". ` +
        (live.length ? `It publishes: ${live.join(', ')}.` : 'It publishes nothing right now.');
    }
    if (t.status !== 'active') return `Track "${trackName}" of session ${sessionId} is no longer published (inactive): its publisher stopped it or left.`;
    return null;
  }

  const rtcConfig = { iceServers: [], bundlePolicy: 'max-bundle' };

  // Lifetime asked for the "force relay" credential: the TURN server checks it again on every
  // allocation refresh, so it must outlast the call.
  const RELAY_TTL_SECS = 12 * 3600;

  /**
   * The RTCPeerConnection configuration for a new connection: the plain one, or with "force relay"
   * checked, iceTransportPolicy "relay" and the node's TURN servers with a fresh credential from
   * `generate-ice-servers` (the Calls TURN API, bearer: the TURN key's secret). The TURN key is the
   * user's to enter: the node hands out TURN credentials only to a bearer of the key.
   */
  async function rtcConfigNow() {
    const box = $('#forceRelay');
    if (!box || !box.checked) return rtcConfig;
    const keyId = ($('#turnKeyId') ? $('#turnKeyId').value : '').trim();
    const keySecret = ($('#turnKeySecret') ? $('#turnKeySecret').value : '').trim();
    if (!keyId || !keySecret) throw new Error('"Force relay" needs the TURN key id and secret (the node\'s --turn-key ID:SECRET).');
    // The TURN API sits at the root of the node the app API is on.
    const base = config().base;
    const root = /\/v1\/apps\/[^/]+$/.test(base) ? base.replace(/\/v1\/apps\/[^/]+$/, '') : new URL(base).origin;
    const path = `/v1/turn/keys/${encodeURIComponent(keyId)}/credentials/generate-ice-servers`;
    let res;
    try {
      res = await fetch(root + path, {
        method: 'POST',
        headers: { 'Authorization': `Bearer ${keySecret}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ ttl: RELAY_TTL_SECS }),
      });
    } catch (e) {
      throw new ApiError(`POST ${path}: request failed (${e.message})`, 0);
    }
    const text = await res.text();
    let json = null;
    try { json = JSON.parse(text); } catch (_) { /* not JSON */ }
    log(`POST ${path} -> ${res.status}${json && json.errorCode ? ' ' + json.errorCode : ''}`);
    if (res.status !== 201 || !json || !Array.isArray(json.iceServers)) {
      throw new ApiError(`TURN credentials for "force relay": POST ${path}: HTTP ${res.status}\nerrorCode: ${(json && json.errorCode) || '(none)'}\nerrorDescription: ${(json && json.errorDescription) || text.slice(0, 200) || '(none)'}`,
        res.status, json && json.errorCode, json && json.errorDescription);
    }
    return { ...rtcConfig, iceServers: json.iceServers, iceTransportPolicy: 'relay' };
  }

  function waitConnected(pc, ms) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (pc.connectionState === 'connected') { done(); resolve(); }
        else if (pc.connectionState === 'failed' || pc.connectionState === 'closed') { done(); reject(new Error(`PeerConnection ${pc.connectionState}`)); }
      };
      const timer = setTimeout(() => { done(); reject(new Error(`PeerConnection not connected after ${ms / 1000} s (ICE: ${pc.iceConnectionState})`)); }, ms);
      const done = () => { clearTimeout(timer); pc.removeEventListener('connectionstatechange', check); };
      pc.addEventListener('connectionstatechange', check);
      check();
    });
  }

  // One mutation at a time per session (the API serialises them; so do we).
  function queue() { let p = Promise.resolve(); return (fn) => (p = p.then(fn, fn)); }

  const randomHex = (n) => Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => b.toString(16).padStart(2, '0')).join('');

  // ---- live stats: bitrate, frame rate, RTT, loss per mid, from getStats() deltas ----
  function statsSampler(pc) {
    let prev = new Map();
    return async function sample() {
      let report;
      try { report = await pc.getStats(); } catch (_) { return new Map(); }
      const byId = new Map();
      report.forEach((s) => byId.set(s.id, s));
      let rtt = null;
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && s.currentRoundTripTime !== undefined) rtt = s.currentRoundTripTime;
      });
      const out = new Map();
      const next = new Map();
      report.forEach((s) => {
        if ((s.type !== 'inbound-rtp' && s.type !== 'outbound-rtp') || s.mid === undefined) return;
        const bytes = s.type === 'inbound-rtp' ? s.bytesReceived : s.bytesSent;
        const key = `${s.type}/${s.mid}`;
        const p = prev.get(key);
        const kbps = p && s.timestamp > p.t ? ((bytes - p.bytes) * 8) / (s.timestamp - p.t) : null;
        next.set(key, { t: s.timestamp, bytes });
        let loss = null;
        let hopRtt = rtt;
        if (s.type === 'inbound-rtp') {
          const got = s.packetsReceived || 0; const lost = Math.max(0, s.packetsLost || 0);
          loss = got + lost > 0 ? lost / (got + lost) : 0;
        } else {
          const remote = s.remoteId && byId.get(s.remoteId);
          if (remote) {
            if (remote.fractionLost !== undefined) loss = remote.fractionLost;
            if (remote.roundTripTime !== undefined) hopRtt = remote.roundTripTime;
          }
        }
        out.set(s.mid, {
          kind: s.kind, kbps, fps: s.framesPerSecond === undefined ? null : s.framesPerSecond,
          rtt: hopRtt, loss, packets: s.packetsReceived || s.packetsSent || 0,
          frames: s.framesDecoded === undefined ? s.framesEncoded : s.framesDecoded,
          width: s.frameWidth, height: s.frameHeight,
        });
      });
      prev = next;
      return out;
    };
  }
  function formatStats(s) {
    if (!s) return 'waiting for media...';
    const parts = [s.kbps === null ? '… kbps' : `${Math.round(s.kbps)} kbps`];
    if (s.kind === 'video') parts.push(`${s.fps === null ? 0 : Math.round(s.fps)} fps`);
    if (s.kind === 'video' && s.width) parts.push(`${s.width}x${s.height}`);
    parts.push(s.rtt === null ? 'RTT …' : `RTT ${Math.round(s.rtt * 1000)} ms`);
    parts.push(s.loss === null ? 'loss …' : `loss ${(s.loss * 100).toFixed(1)}%`);
    return parts.join(' · ');
  }

  window.TM = {
    $, log, showError, clearError, ApiError, bindSettings, hasSettings, config, api, itemErrors,
    closeOnUnload, whyNotPullable, SESSION_ID, rtcConfig, rtcConfigNow, waitConnected, queue, randomHex,
    statsSampler, formatStats,
  };
})();
