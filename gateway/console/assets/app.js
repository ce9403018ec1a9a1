// OmniGate's admin console. Plain script, no dependencies: it reads the
// admin endpoints with the admin token (kept in sessionStorage) and draws
// its charts as SVG. Every value from the gateway is put in the page as
// text, never as markup.
'use strict';
(() => {
  const TOKEN_KEY = 'omnigate.admin.token';
  const WINDOW_MS = 5 * 60 * 1000;
  const $ = (id) => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';
  const COLORS = { blue: '#1f77b4', orange: '#ff7f0e', green: '#2ca02c', red: '#d62728', purple: '#9467bd', grey: '#7f7f7f' };

  const state = { overview: null, page: null, timer: null, busy: false, user: '' };

  // ---- DOM helpers ----------------------------------------------------

  function el(tag, props, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const k of kids.flat()) {
      if (k === undefined || k === null || k === false) continue;
      e.append(k instanceof Node ? k : document.createTextNode(String(k)));
    }
    return e;
  }

  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // table fills a <table>: cols are {t, num}, rows arrays of cells; a cell
  // is text, a Node, or {v, num, mono, title}.
  function table(t, cols, rows, empty) {
    const head = el('tr', {}, cols.map((c) => el('th', { class: c.num ? 'num' : null, text: c.t })));
    const body = rows.length === 0
      ? [el('tr', {}, el('td', { class: 'empty', colspan: cols.length, text: empty || 'none' }))]
      : rows.map((r) => el('tr', {}, r.map((c, i) => {
        const plain = c === null || c === undefined || typeof c !== 'object' || c instanceof Node;
        const v = plain ? c : c.v;
        const cls = [(plain ? cols[i].num : (c.num ?? cols[i].num)) ? 'num' : '', !plain && c.mono ? 'mono' : ''].join(' ').trim();
        return el('td', { class: cls || null, title: plain ? null : c.title }, v ?? '–');
      })));
    t.replaceChildren(el('thead', {}, head), el('tbody', {}, body));
  }

  function tiles(box, items) {
    box.replaceChildren(...items.map(([k, v, title]) => el('div', { class: 'tile', title },
      el('div', { class: 'v' }, v), el('div', { class: 'k', text: k }))));
  }

  function bars(box, items, fmt) {
    const max = Math.max(1, ...items.map(([, n]) => n));
    if (items.length === 0) {
      box.replaceChildren(el('p', { class: 'muted', text: 'none' }));
      return;
    }
    box.replaceChildren(...items.map(([name, n]) => {
      const fill = el('div', { class: 'fill' });
      fill.style.width = (100 * n / max).toFixed(1) + '%';
      return el('div', { class: 'bar' }, el('span', { class: 'name', title: name, text: name }),
        el('div', { class: 'track' }, fill), el('span', { class: 'n', text: (fmt || fmtNum)(n) }));
    }));
  }

  function pill(status) {
    return el('span', { class: 'pill ' + String(status || '').toLowerCase(), text: status || 'unknown' });
  }

  // ---- formatting -----------------------------------------------------

  function fmtNum(n, digits) {
    if (n === null || n === undefined || Number.isNaN(n)) return '–';
    if (digits !== undefined) return Number(n).toFixed(digits);
    return Number(n).toLocaleString('en-US', { maximumFractionDigits: Math.abs(n) < 10 ? 2 : (Math.abs(n) < 100 ? 1 : 0) });
  }
  function fmtBytes(b) {
    if (b === null || b === undefined) return '–';
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i === 0 ? b : b.toFixed(1)) + ' ' + u[i];
  }
  function fmtSecs(s) {
    if (s === null || s === undefined) return '–';
    s = Math.max(0, Math.round(s));
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
    if (d) return d + 'd ' + h + 'h';
    if (h) return h + 'h ' + m + 'm';
    if (m) return m + 'm ' + r + 's';
    return r + 's';
  }
  function fmtTime(iso) {
    if (!iso || iso.startsWith('0001-')) return '–';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso;
    return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
  }
  // fmtShort is the time of day for today's instants, the date and minute
  // for others.
  function fmtShort(iso) {
    const full = fmtTime(iso);
    if (full === '–' || full === iso) return full;
    const today = new Date().toISOString().slice(0, 10);
    return full.startsWith(today) ? full.slice(11, 19) : full.slice(0, 16);
  }
  function fmtAgo(iso) {
    const d = Date.parse(iso);
    if (Number.isNaN(d)) return '–';
    return fmtSecs((Date.now() - d) / 1000) + ' ago';
  }
  function fmtMs(v) { return v === null || v === undefined ? '–' : (v < 10 ? v.toFixed(2) : v.toFixed(1)) + ' ms'; }
  function fmtPct(v) { return v === null || v === undefined ? '–' : (100 * v).toFixed(1) + '%'; }

  // ---- the admin API --------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(method, path, body, okStatuses) {
    const headers = { Accept: 'application/json' };
    const tok = sessionStorage.getItem(TOKEN_KEY);
    if (tok) headers.Authorization = 'Bearer ' + tok;
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
    if (res.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin('The admin token was refused. Enter it again.');
      throw new ApiError(401, 'admin token required');
    }
    if (!res.ok && !(okStatuses || []).includes(res.status)) {
      const msg = data && typeof data === 'object'
        ? (data.detail || data.error || (data.issue && data.issue[0] && data.issue[0].diagnostics) || res.statusText)
        : (text || res.statusText);
      throw new ApiError(res.status, res.status + ' ' + msg);
    }
    return data;
  }

  function has(endpoint) {
    return !!state.overview && state.overview.endpoints.includes(endpoint);
  }

  // ---- notices and confirmation ---------------------------------------

  function notice(text, bad) {
    const n = $('notice');
    n.textContent = text;
    n.className = 'notice' + (bad ? ' bad' : '');
    n.hidden = false;
  }

  function failed(err) {
    if (err instanceof ApiError && err.status === 401) return;
    notice(err.message || String(err), true);
  }

  // confirmAction opens the page's dialog and resolves to true when the
  // operator confirms.
  function confirmAction(title, text) {
    const d = $('confirm');
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = text;
    state.busy = true;
    return new Promise((resolve) => {
      const done = (ok) => {
        $('confirm-ok').onclick = null;
        $('confirm-cancel').onclick = null;
        d.onclose = null;
        if (d.open) d.close();
        state.busy = false;
        resolve(ok);
      };
      $('confirm-ok').onclick = () => done(true);
      $('confirm-cancel').onclick = () => done(false);
      d.onclose = () => done(false);
      d.showModal();
    });
  }

  // act asks for confirmation, makes the request, says what happened and
  // reloads the page's data.
  async function act(title, text, method, path, body, describe) {
    if (!await confirmAction(title, text)) return;
    try {
      const out = await api(method, path, body);
      notice(describe ? describe(out) : title + ': done');
    } catch (err) {
      failed(err);
    }
    await refresh();
  }

  // ---- charts ---------------------------------------------------------

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  // lineChart draws series [{name, color, points: [[ms, value|null]]}] over
  // [from, to] into an <svg>, and the legend into legendEl.
  function lineChart(svgNode, legendEl, series, from, to, opts) {
    opts = opts || {};
    const w = Math.max(200, svgNode.clientWidth || svgNode.getBoundingClientRect().width || 500);
    const h = Math.max(100, svgNode.clientHeight || 170);
    const L = 44, R = 10, T = 8, B = 20;
    svgNode.setAttribute('viewBox', `0 0 ${w} ${h}`);
    const kids = [];
    let max = 0, drawn = 0;
    for (const s of series) for (const [, v] of s.points) if (v !== null && v > max) max = v;
    const ymax = opts.max || niceMax(max);
    const x = (t) => L + (w - L - R) * (t - from) / Math.max(1, to - from);
    const y = (v) => T + (h - T - B) * (1 - Math.min(v, ymax) / ymax);
    for (let i = 0; i <= 4; i++) {
      const v = ymax * i / 4, yy = y(v);
      kids.push(svgEl('line', { class: i === 0 ? 'axis' : 'grid', x1: L, x2: w - R, y1: yy, y2: yy }));
      kids.push(svgEl('text', { x: L - 6, y: yy + 3, 'text-anchor': 'end' }, fmtNum(v)));
    }
    const span = to - from;
    const step = [5e3, 10e3, 15e3, 30e3, 60e3, 120e3, 300e3].find((s) => span / s <= 6) || 600e3;
    for (let i = 0; to - i * step >= from; i++) {
      const t = to - i * step, ago = i * step / 1000;
      kids.push(svgEl('line', { class: 'grid', x1: x(t), x2: x(t), y1: T, y2: h - B }));
      kids.push(svgEl('text', { x: x(t), y: h - 6, 'text-anchor': i === 0 ? 'end' : 'middle' },
        i === 0 ? 'now' : '-' + (ago % 60 === 0 ? ago / 60 + 'm' : ago + 's')));
    }
    for (const s of series) {
      let d = '', pen = false, pts = 0;
      for (const [t, v] of s.points) {
        if (v === null || v === undefined || t < from) { pen = false; continue; }
        d += (pen ? 'L' : 'M') + x(t).toFixed(1) + ',' + y(v).toFixed(1);
        pen = true;
        pts++;
      }
      drawn += pts;
      if (d) kids.push(svgEl('path', { d, fill: 'none', stroke: s.color, 'stroke-width': 1.8, 'stroke-linejoin': 'round', class: 'series' }));
    }
    if (drawn === 0) {
      kids.push(svgEl('text', { x: w / 2, y: h / 2, 'text-anchor': 'middle', class: 'empty' }, 'collecting samples…'));
    }
    svgNode.replaceChildren(...kids);
    svgNode.dataset.points = String(drawn);
    legendEl.replaceChildren(...series.map((s) => {
      const sw = el('i');
      sw.style.background = s.color;
      return el('span', {}, sw, s.name);
    }));
  }

  // ---- pages ----------------------------------------------------------

  const pages = {};

  pages.overview = async () => {
    const [ping, series] = await Promise.all([
      api('GET', '/ping', undefined, [503]),
      api('GET', '/admin/metrics/series?minutes=5'),
    ]);
    setStatus(ping);
    const ss = series.samples;
    // The last five minutes, or what there is of them (at least 30s).
    const last = ss.length ? Date.parse(ss[ss.length - 1].t) : Date.now();
    const first = ss.length ? Date.parse(ss[0].t) - 1000 * ss[0].seconds : last;
    const from = last - Math.min(WINDOW_MS, Math.max(30000, last - first));
    const pts = (f) => ss.map((s) => [Date.parse(s.t), f(s)]);
    lineChart($('chart-rps'), $('lg-rps'), [
      { name: 'requests', color: COLORS.blue, points: pts((s) => s.rps) },
      { name: '429', color: COLORS.red, points: pts((s) => s.limited) },
    ], from, last);
    lineChart($('chart-latency'), $('lg-lat'), [
      { name: 'p50', color: COLORS.blue, points: pts((s) => s.p50_ms) },
      { name: 'p99', color: COLORS.orange, points: pts((s) => s.p99_ms) },
    ], from, last);
    lineChart($('chart-status'), $('lg-status'), [
      { name: '2xx', color: COLORS.green, points: pts((s) => s.status['2xx']) },
      { name: '3xx', color: COLORS.blue, points: pts((s) => s.status['3xx']) },
      { name: '4xx', color: COLORS.orange, points: pts((s) => s.status['4xx']) },
      { name: '5xx', color: COLORS.red, points: pts((s) => s.status['5xx']) },
    ], from, last);
    lineChart($('chart-cache'), $('lg-cache'), [
      { name: 'hit ratio', color: COLORS.purple, points: pts((s) => s.hit_ratio === null ? null : 100 * s.hit_ratio) },
    ], from, last, { max: 100 });

    // Tiles: the last 10 seconds for rates, the last minute for ratios.
    const recent = ss.slice(-10), minute = ss.slice(-60);
    const avg = (arr, f) => arr.length ? arr.reduce((a, s) => a + f(s) * s.seconds, 0) / arr.reduce((a, s) => a + s.seconds, 0) : null;
    const lastOf = (f) => { for (let i = ss.length - 1; i >= Math.max(0, ss.length - 10); i--) if (f(ss[i]) !== null) return f(ss[i]); return null; };
    const hits = minute.reduce((a, s) => a + ((s.cache.hit || 0) + (s.cache.stale || 0)) * s.seconds, 0);
    const looked = minute.reduce((a, s) => a + ((s.cache.hit || 0) + (s.cache.stale || 0) + (s.cache.miss || 0)) * s.seconds, 0);
    const ov = state.overview;
    tiles($('ov-tiles'), [
      ['Status', pill(ping.status)],
      ['Uptime', fmtSecs(ping.uptime_seconds), 'version ' + (ping.version || 'unknown')],
      ['Requests/s', fmtNum(avg(recent, (s) => s.rps)), 'average of the last 10 seconds'],
      ['p50', fmtMs(lastOf((s) => s.p50_ms)), 'latency, the last second with requests'],
      ['p99', fmtMs(lastOf((s) => s.p99_ms)), 'latency, the last second with requests'],
      ['429/s', fmtNum(avg(recent, (s) => s.limited)), 'average of the last 10 seconds'],
      ['Cache hits', looked ? fmtPct(hits / looked) : '–', 'hit ratio, the last minute'],
      ['In flight', fmtNum(ss.length ? ss[ss.length - 1].in_flight : null)],
    ]);

    const comps = Object.entries(ping.components).sort(([a], [b]) => a.localeCompare(b));
    const plugs = Object.entries(ping.plugins).sort(([a], [b]) => a.localeCompare(b));
    table($('ov-components'), [{ t: 'component' }, { t: 'status' }, { t: 'detail' }], [
      ...comps.map(([n, h]) => [n, pill(h.status), detail(h)]),
      ...plugs.map(([n, h]) => [el('span', {}, n, ' ', el('span', { class: 'muted', text: '(' + h.type + ')' })), pill(h.status), detail(h)]),
    ]);
    table($('ov-routes'), [{ t: 'route' }, { t: 'path' }, { t: 'chain' }], ov.routes.map((r) => [
      el('span', {}, r.name, r.methods && r.methods.length ? el('div', { class: 'muted', text: r.methods.join(' ') }) : null),
      { v: r.path, mono: true },
      chain(r),
    ]));
  };

  function detail(h) {
    const parts = [h.detail || ''];
    if (h.required) parts.push('(required)');
    const out = el('span', {}, parts.join(' '));
    for (const w of h.warnings || []) out.append(el('div', { class: 'error', text: '⚠ ' + w }));
    return out;
  }

  function chain(r) {
    const box = el('div', { class: 'chain' });
    for (const p of r.plugins) box.append(el('span', { class: 'chip', text: p }), el('span', { class: 'arrow', text: '→' }));
    box.append(el('span', { class: 'chip term', title: r.upstream || '', text: r.terminal === 'upstream' ? 'upstream' : 'FHIR server' }));
    return box;
  }

  function setStatus(ping) {
    $('version').textContent = ping.version || '';
    const s = $('status');
    s.className = 'pill ' + ping.status;
    s.textContent = ping.status;
  }

  pages.ratelimit = async () => {
    const [stats, blocks] = await Promise.all([api('GET', '/admin/ratelimit/stats'), api('GET', '/admin/ratelimit/blocks')]);
    const plugins = Object.entries(stats.plugins).sort(([a], [b]) => a.localeCompare(b));
    const sum = (f) => plugins.reduce((a, [, p]) => a + (f(p) || 0), 0);
    tiles($('rl-tiles'), [
      ['Decisions', fmtNum(sum((p) => p.total))],
      ['Limited', fmtNum(sum((p) => p.by_result.limited))],
      ['Blocked', fmtNum(sum((p) => p.by_result.blocked))],
      ['Blocks now', String(blocks.blocks.length)],
      ['Store', plugins.map(([, p]) => p.store).filter((v, i, a) => a.indexOf(v) === i).join(', ') || '–'],
      ['Redis errors', fmtNum(sum((p) => p.redis_errors))],
    ]);
    table($('rl-blocks'), [{ t: 'client' }, { t: 'plugin' }, { t: 'until' }, { t: 'left', num: true }, { t: '' }],
      blocks.blocks.map((b) => [{ v: b.key, mono: true }, b.plugin, fmtTime(b.until), fmtSecs(b.seconds_left),
        el('button', {
          class: 'small danger', type: 'button', dataset: { action: 'unblock', key: b.key },
          onclick: () => act('Unblock ' + b.key, 'Lift the block of ' + b.key + ' (' + b.plugin + ') on every instance and forget its recent rejections?',
            'DELETE', '/admin/ratelimit/blocks/' + encodeURIComponent(b.key) + '?plugin=' + encodeURIComponent(b.plugin), undefined,
            () => 'Unblocked ' + b.key),
        }, 'Unblock')]), 'no client is blocked');
    const top = [];
    for (const [name, p] of plugins) for (const k of p.top_limited || []) top.push({ plugin: name, key: k.key, n: k.rejected });
    top.sort((a, b) => b.n - a.n || a.key.localeCompare(b.key));
    table($('rl-top'), [{ t: 'client' }, { t: 'plugin' }, { t: 'rejected', num: true }],
      top.slice(0, 20).map((k) => [{ v: k.key, mono: true }, k.plugin, fmtNum(k.n)]), 'no request was limited');
    const rows = [];
    for (const [name, p] of plugins) {
      const by = (m) => Object.entries(m || {}).sort((a, b) => b[1] - a[1]).map(([k, v]) => k + ' ' + fmtNum(v)).join(', ');
      rows.push([name, p.store, fmtNum(p.live_instances), by(p.by_result), by(p.by_role), by(p.by_route)]);
    }
    table($('rl-decisions'), [{ t: 'plugin' }, { t: 'store' }, { t: 'instances', num: true }, { t: 'by result' }, { t: 'by role' }, { t: 'by route' }], rows);
  };

  pages.sessions = async () => {
    const st = await api('GET', '/admin/sessions/stats');
    tiles($('ss-tiles'), [
      ['Live sessions', fmtNum(st.active)],
      ['Store', st.store],
      ['Pending replay', fmtNum(st.pending_replay), 'revocations made during a Redis outage, not yet replayed'],
      ['Cached locally', fmtNum(st.local_cache_entries ?? st.cached)],
    ]);
    bars($('ss-roles'), Object.entries(st.by_role || {}).sort((a, b) => b[1] - a[1]));
    if (state.user) await listSessions(state.user);
  };

  async function listSessions(user) {
    const path = '/admin/users/' + encodeURIComponent(user) + '/sessions';
    const out = await api('GET', path);
    state.user = user;
    $('ss-revoke-all').disabled = out.sessions.length === 0;
    table($('ss-list'), [{ t: 'session' }, { t: 'role' }, { t: 'created' }, { t: 'last seen' }, { t: 'ends' }, { t: 'client' }, { t: '' }],
      out.sessions.map((s) => [
        { v: s.id.slice(0, 10) + '…', mono: true, title: s.id + ' (' + s.method + ')' },
        s.role, { v: fmtShort(s.created), title: s.created }, { v: fmtShort(s.last_seen), title: s.last_seen },
        { v: fmtShort(s.idle_expires < s.expires ? s.idle_expires : s.expires), title: 'idle: ' + s.idle_expires + ', absolute: ' + s.expires },
        el('span', { title: s.user_agent || '' }, s.client_ip || '–'),
        el('button', {
          class: 'small danger', type: 'button', dataset: { action: 'revoke', id: s.id },
          onclick: () => act('Revoke a session of ' + user, 'End session ' + s.id.slice(0, 12) + '… of ' + user + ' (' + s.role + ', from ' + (s.client_ip || 'unknown') + ')?',
            'DELETE', path + '/' + encodeURIComponent(s.id), undefined, () => 'Session revoked'),
        }, 'Revoke'),
      ]), user + ' has no live session');
  }

  pages.cache = async () => {
    const st = await api('GET', '/admin/cache/stats');
    const routes = st.routes || [];
    const tot = routes.reduce((a, r) => ({ h: a.h + r.hits, m: a.m + r.misses, s: a.s + r.stale }), { h: 0, m: 0, s: 0 });
    const w = st.warming || {};
    tiles($('ca-tiles'), [
      ['Store', st.store],
      ['Hit ratio', tot.h + tot.m + tot.s ? fmtPct((tot.h + tot.s) / (tot.h + tot.m + tot.s)) : '–', 'since the config was loaded'],
      ['Memory tier', fmtBytes(st.memory_bytes), (st.memory_entries ?? 0) + ' entries' + (st.store === 'redis' ? '; used while Redis is down' : '')],
      ['L1', st.l1_bytes === undefined ? 'off' : fmtBytes(st.l1_bytes)],
      ['Warming', w.running ? 'running' : (w.last ? 'done' : 'never')],
    ]);
    table($('ca-routes'), [{ t: 'route' }, { t: 'hits', num: true }, { t: 'misses', num: true }, { t: 'stale', num: true }, { t: 'bypassed', num: true }, { t: 'hit ratio', num: true }],
      routes.map((r) => [r.route, fmtNum(r.hits), fmtNum(r.misses), fmtNum(r.stale), fmtNum(r.bypassed), fmtPct(r.hit_ratio)]), 'no cacheable request yet');
    const sel = $('ca-route');
    const caches = state.overview.plugins.filter((p) => p.type === 'cache').map((p) => p.name);
    const want = state.overview.routes.filter((r) => r.plugins.some((p) => caches.includes(p))).map((r) => r.name);
    if (sel.options.length - 1 !== want.length) {
      sel.replaceChildren(el('option', { value: '', text: 'or a route…' }), ...want.map((n) => el('option', { value: 'route:' + n, text: 'route ' + n })));
    }
    const kv = el('dl', { class: 'kv' });
    const add = (k, v) => kv.append(el('dt', { text: k }), el('dd', { text: v }));
    add('now', w.running ? 'warming since ' + fmtTime(w.started) : 'idle');
    if (w.last) {
      const l = w.last;
      add('last run', fmtTime(w.last_finished) + ' (' + l.duration + ')');
      add('result', `${l.requests} requests: ${l.stored} stored, ${l.cached} already cached, ${l.not_kept} not cacheable, ${l.failed} failed, ${l.skipped} skipped`);
    }
    if (st.outage_max_age) add('outage max age', st.outage_max_age);
    $('ca-warm').replaceChildren(kv);
  };

  pages.plugins = async () => {
    const [ping, m] = await Promise.all([api('GET', '/ping', undefined, [503]), api('GET', 'api/plugins')]);
    setStatus(ping);
    const ov = state.overview;
    const met = (n) => m.plugins[n] || {};
    const chainsOf = (n) => ov.routes.filter((r) => r.plugins.includes(n)).map((r) => r.name).join(', ');
    table($('pl-list'), [{ t: 'plugin' }, { t: 'type' }, { t: 'status' }, { t: 'detail' }, { t: 'routes' }, { t: 'calls', num: true }, { t: 'mean time', num: true }, { t: 'panics', num: true }],
      ov.plugins.map((p) => {
        const h = ping.plugins[p.name] || { status: 'unknown' };
        const x = met(p.name), n = x.plugin_duration_seconds_count || 0;
        return [p.name, p.type, pill(h.status), detail(h), chainsOf(p.name) || '–', fmtNum(n),
          n ? fmtNum(1e6 * x.plugin_duration_seconds_sum / n) + ' µs' : '–', fmtNum(x.panics_total || 0)];
      }));
    const byType = (t) => ov.plugins.filter((p) => p.type === t);
    const kinds = (x, prefix) => Object.entries(x).filter(([k]) => k.startsWith(prefix + ':')).map(([k, v]) => k.slice(prefix.length + 1) + ' ' + fmtNum(v)).join(', ');
    table($('pl-wasm'), [{ t: 'plugin' }, { t: 'pool', num: true }, { t: 'decisions', num: true }, { t: 'failures' }, { t: 'recycled', num: true }, { t: 'reloads' }],
      byType('wasm').map((p) => {
        const x = met(p.name);
        return [p.name, fmtNum(x.wasm_instances), fmtNum(x.wasm_decisions_total || 0),
          (fmtNum(x.wasm_failures_total || 0) + ' ' + (kinds(x, 'wasm_failures_total') ? '(' + kinds(x, 'wasm_failures_total') + ')' : '')).trim(),
          fmtNum(x.wasm_instances_discarded_total || 0), kinds(x, 'wasm_reloads_total') || '0'];
      }), 'no WebAssembly plugin');
    table($('pl-external'), [{ t: 'plugin' }, { t: 'up', num: true }, { t: 'restarts' }, { t: 'health-check failures', num: true }, { t: 'failures' }, { t: 'mean call', num: true }],
      byType('external').map((p) => {
        const x = met(p.name), n = x.external_call_duration_seconds_count || 0;
        return [p.name, fmtNum(x.external_up), kinds(x, 'external_restarts_total') || '0', fmtNum(x.external_health_check_failures_total || 0),
          (fmtNum(x.external_failures_total || 0) + ' ' + (kinds(x, 'external_failures_total') ? '(' + kinds(x, 'external_failures_total') + ')' : '')).trim(),
          n ? fmtNum(1e6 * x.external_call_duration_seconds_sum / n) + ' µs' : '–'];
      }), 'no external plugin');
  };

  pages.fhir = async () => {
    if (has('GET /admin/fhir/stats')) {
      const st = await api('GET', '/admin/fhir/stats');
      tiles($('fh-tiles'), [
        ['Resources', fmtNum(st.resources)],
        ['Versions', fmtNum(st.versions)],
        ['Store size', fmtBytes(st.bytes)],
        ['Types', String(Object.keys(st.by_type || {}).length)],
        ['Last backup', st.last_backup ? fmtAgo(st.last_backup.time) : 'never', st.last_backup ? fmtTime(st.last_backup.time) : ''],
      ]);
      bars($('fh-types'), Object.entries(st.by_type || {}).sort((a, b) => b[1] - a[1]));
      const kv = el('dl', { class: 'kv' });
      const add = (k, v) => kv.append(el('dt', { text: k }), el('dd', { text: v }));
      add('store', st.backend + (st.path ? ' ' + st.path : ''));
      add('backup folder', st.backup_dir || '–');
      add('backups', String(st.backups ?? 0));
      if (st.last_backup) add('last', st.last_backup.path + ' (' + fmtBytes(st.last_backup.bytes) + ')');
      $('fh-backup').replaceChildren(kv);
      $('fh-backup-now').hidden = !has('POST /admin/fhir/backup');
    }
    $('au-card').hidden = !has('GET /admin/audit/events');
    if (has('GET /admin/audit/stats')) {
      const a = await api('GET', '/admin/audit/stats');
      const rows = Object.entries(a.plugins).map(([n, p]) => [n, fmtBytes(p.spool_bytes) + ' of ' + fmtBytes(p.max_spool_bytes), fmtNum(p.pending),
        fmtNum(p.appended), fmtNum(p.flushed), fmtNum(p.dropped), (p.sinks || []).map((s) => s.name + (s.failing ? ' (failing)' : '')).join(', ')]);
      const t = el('table');
      table(t, [{ t: 'plugin' }, { t: 'spool' }, { t: 'pending', num: true }, { t: 'appended', num: true }, { t: 'flushed', num: true }, { t: 'dropped', num: true }, { t: 'sinks' }], rows);
      $('au-stats').replaceChildren(t);
    }
  };

  async function searchAudit() {
    const q = new URLSearchParams();
    for (const k of ['patient', 'user', 'since', 'until', 'count']) {
      const v = $('au-' + k).value.trim();
      if (v) q.set(k, v);
    }
    const b = await api('GET', '/admin/audit/events?' + q.toString());
    const rows = (b.entry || []).map((e) => {
      const ev = e.resource;
      const user = (ev.agent || []).find((a) => a.requestor && a.name);
      const client = (ev.agent || []).find((a) => a.network && a.network.type === '2');
      const what = [...new Set((ev.entity || []).map((x) => (x.what && x.what.reference) || x.description).filter(Boolean))].join(', ');
      const sub = (ev.subtype || []).map((c) => c.code).join(', ');
      return [fmtTime(ev.recorded), sub || ev.action, el('span', {}, pill(ev.outcome === '0' ? 'ok' : (ev.outcome === '4' ? 'degraded' : 'down')), ' ', ev.outcomeDesc || ''),
        user ? user.name : '–', client ? client.network.address : '–', { v: what, mono: true }];
    });
    table($('au-events'), [{ t: 'recorded' }, { t: 'interaction' }, { t: 'outcome' }, { t: 'user' }, { t: 'client' }, { t: 'what' }], rows, 'no AuditEvent matches');
  }

  // ---- navigation -----------------------------------------------------

  const available = {
    overview: () => true,
    ratelimit: () => has('GET /admin/ratelimit/stats'),
    sessions: () => has('GET /admin/sessions/stats'),
    cache: () => has('GET /admin/cache/stats'),
    plugins: () => true,
    fhir: () => has('GET /admin/fhir/stats') || has('GET /admin/audit/events'),
  };

  async function refresh() {
    const page = state.page;
    if (!page || state.busy) return;
    try {
      await pages[page]();
      document.body.dataset.loaded = page;
    } catch (err) {
      failed(err);
    }
  }

  async function show(page) {
    if (!pages[page] || !available[page]()) page = 'overview';
    if (state.page !== page) $('notice').hidden = true;
    state.page = page;
    delete document.body.dataset.loaded;
    for (const s of document.querySelectorAll('.page')) s.hidden = s.id !== 'page-' + page;
    for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === page);
    clearInterval(state.timer);
    state.timer = setInterval(refresh, page === 'overview' ? 2000 : 5000);
    await refresh();
  }

  function showLogin(message) {
    clearInterval(state.timer);
    state.page = null;
    for (const s of document.querySelectorAll('.page')) s.hidden = true;
    $('nav').hidden = true;
    $('logout').hidden = true;
    $('login').hidden = false;
    const e = $('login-error');
    e.hidden = !message;
    e.textContent = message || '';
    $('token').focus();
  }

  async function start() {
    state.overview = await api('GET', 'api/overview');
    $('login').hidden = true;
    $('nav').hidden = false;
    $('logout').hidden = !state.overview.token_required;
    for (const a of document.querySelectorAll('#nav a')) a.hidden = !available[a.dataset.page]();
    await show(location.hash.slice(1) || 'overview');
  }

  function wire() {
    window.addEventListener('hashchange', () => { if (state.overview && state.page) show(location.hash.slice(1)); });
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $('token').value);
      $('token').value = '';
      start().catch(failed);
    });
    $('logout').addEventListener('click', () => {
      sessionStorage.removeItem(TOKEN_KEY);
      state.overview = null;
      showLogin('');
    });
    $('ss-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      listSessions($('ss-user').value.trim()).catch(failed);
    });
    $('ss-revoke-all').addEventListener('click', () => {
      const user = state.user;
      if (!user) return;
      act('Revoke all sessions of ' + user, 'End every session of ' + user + ', on every instance?', 'DELETE',
        '/admin/users/' + encodeURIComponent(user) + '/sessions', undefined, (o) => o.revoked + ' sessions of ' + user + ' revoked' + (o.pending ? ' (replayed to Redis when it returns)' : ''));
    });
    $('ca-purge').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const tags = $('ca-tags').value.split(',').map((s) => s.trim()).filter(Boolean);
      if ($('ca-route').value) tags.push($('ca-route').value);
      if (tags.length === 0) { notice('Name a tag or a route to purge.', true); return; }
      act('Purge the cache', 'Make the cached entries of ' + tags.join(', ') + ' stale on every instance?', 'POST', '/admin/cache/purge', { tags },
        (o) => 'Purged: ' + o.purged.join(', '));
    });
    $('ca-purge-all').addEventListener('click', () => act('Purge the whole cache', 'Make every cached entry stale on every instance?', 'POST', '/admin/cache/purge', { all: true },
      () => 'The whole cache was purged'));
    $('ca-warm-now').addEventListener('click', () => act('Warm the cache', 'Replay the configured warming requests and the hot keys now?', 'POST', '/admin/cache/warm', undefined,
      (o) => `Warmed: ${o.requests} requests, ${o.stored} stored, ${o.failed} failed, in ${o.duration}`));
    $('fh-backup-now').addEventListener('click', () => act('Back up the FHIR store', 'Write a consistent copy of the store into the backup folder now?', 'POST', '/admin/fhir/backup', undefined,
      (o) => 'Backup written: ' + o.path + ' (' + fmtBytes(o.bytes) + ', ' + o.duration + ')'));
    $('au-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      searchAudit().catch(failed);
    });
  }

  async function boot() {
    wire();
    const res = await fetch('auth', { cache: 'no-store' });
    const auth = await res.json();
    if (auth.token_required && !sessionStorage.getItem(TOKEN_KEY)) {
      showLogin('');
      return;
    }
    await start();
  }

  boot().catch(failed);
})();
