// tern dashboard: one page served by every ternd (docs/api.md "Dashboard"). It reads the
// agent's API — GET /v1/nodes, /v1/jobs, /v1/migrations and the cluster-wide event stream
// /v1/events — and draws node cards, migrations as they happen, a timeline and job pages.
// The browser's EventSource reconnects by itself after an agent restart and sends the last
// event id (a cursor of every node's seq), so no event is lost or shown twice.
'use strict';

const HISTORY_SECONDS = 600;       // CPU and memory kept per node for the charts
const NODE_POLL_MS = 2000;         // loads are not events: /v1/nodes is read this often
const TIMELINE_MAX = 300;

const state = {
  nodes: new Map(),      // name → node object
  jobs: new Map(),       // id → job object
  series: new Map(),     // name → {t:[], cpu:[], mem:[]}
  charts: new Map(),     // name → uPlot
  migrations: new Map(), // migration id → record (as GET /v1/migrations gives it)
  pendingWhy: new Map(), // job → balancer migrate event, until its migration starts
  timeline: [],
  leaving: new Map(),    // job → destination while it moves
  arrived: new Map(),    // job → time it arrived (for the animation)
  connected: false,
};

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
};

function bytes(n) {
  if (n == null) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i && n < 10 ? n.toFixed(1) : Math.round(n)) + ' ' + units[i];
}
const ms = (v) => (v == null ? '–' : v < 1000 ? Math.round(v) + ' ms' : (v / 1000).toFixed(2) + ' s');
const clock = (t) => (t ? new Date(t).toLocaleTimeString() : '–');

// ---------------------------------------------------------------- API

function token() { return localStorage.getItem('tern-token') || ''; }
// The token also travels as a SameSite cookie: EventSource cannot send an Authorization header.
function setToken(value) {
  localStorage.setItem('tern-token', value);
  document.cookie = 'tern_token=' + encodeURIComponent(value) + '; path=/; SameSite=Strict';
}
// `tern-cluster dashboard` prints the address as http://HOST/#token=...: keep it, then drop it
// from the address bar (a fragment never reaches the server). Returns whether it took one.
function takeTokenFromAddress() {
  const match = location.hash.match(/^#token=([^&]+)/);
  if (!match) return false;
  setToken(decodeURIComponent(match[1]));
  history.replaceState(null, '', location.pathname + location.search);
  return true;
}
if (!takeTokenFromAddress() && token()) setToken(token());

async function api(method, path, body) {
  const headers = {};
  if (token()) headers['Authorization'] = 'Bearer ' + token();
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  let data = null;
  try { data = JSON.parse(text); } catch (_) { data = text; }
  if (!response.ok) {
    const message = data && data.error ? data.error : `HTTP ${response.status}`;
    const error = new Error(message);
    error.status = response.status;
    error.data = data;
    throw error;
  }
  return data;
}

function notice(text, ok = false) {
  const box = $('#notice');
  box.textContent = text;
  box.className = ok ? 'ok' : '';
  box.hidden = !text;
  clearTimeout(notice.timer);
  if (text) notice.timer = setTimeout(() => { box.hidden = true; }, ok ? 5000 : 12000);
}

async function act(what, method, path, body) {
  try {
    const answer = await api(method, path, body);
    notice(what + ': done', true);
    return answer;
  } catch (error) {
    let text = what + ' refused: ' + error.message;
    if (error.status === 401 || error.status === 403) text += ' — actions need a token with write rights (the “token” button)';
    if (error.data && Array.isArray(error.data.checks)) {
      text += ' — ' + error.data.checks.filter((c) => !c.ok).map((c) => c.check + ': ' + c.detail).join('; ');
    }
    notice(text);
    return null;
  }
}

// ---------------------------------------------------------------- data

async function loadNodes() {
  try {
    const answer = await api('GET', '/v1/nodes');
    const now = Date.now() / 1000;
    const seen = new Set();
    for (const node of answer.nodes) {
      seen.add(node.name);
      state.nodes.set(node.name, node);
      const cap = node.capacity || node.cpus || 1;
      const s = state.series.get(node.name) || { t: [], cpu: [], mem: [] };
      s.t.push(now);
      s.cpu.push(Math.min(400, (100 * (node.demand || 0)) / cap));
      s.mem.push(node.mem_limit_bytes ? (100 * node.mem_used_bytes) / node.mem_limit_bytes : null);
      while (s.t.length && s.t[0] < now - HISTORY_SECONDS) { s.t.shift(); s.cpu.shift(); s.mem.shift(); }
      state.series.set(node.name, s);
    }
    for (const name of [...state.nodes.keys()]) if (!seen.has(name)) state.nodes.delete(name);
    render();
  } catch (error) {
    $('#summary').textContent = 'agent unreachable: ' + error.message;
  }
}

async function loadJobs() {
  try {
    const answer = await api('GET', '/v1/jobs');
    state.jobs = new Map(answer.jobs.map((j) => [j.id, j]));
    render();
  } catch (_) { /* the next event or poll tries again */ }
}

async function loadMigrations() {
  try {
    const answer = await api('GET', '/v1/migrations?limit=50');
    for (const m of answer.migrations) state.migrations.set(m.id, { ...state.migrations.get(m.id), ...m });
    renderMigrations();
  } catch (_) { /* shown when events arrive */ }
}

function describe(e) {
  switch (e.type) {
    case 'job': return `${e.id} ${e.state} on ${e.node}` + (e.error ? ` (${e.error})` : '');
    case 'node': return `${e.name} is ${e.state}`;
    case 'migration':
      if (e.event === 'started') return `${e.job} ${e.from} → ${e.to} started (${e.mode})`;
      if (e.event === 'moved') return `${e.job} ${e.from} → ${e.to} moved: freeze ${ms(e.freeze_ms)}, total ${ms(e.total_ms)}, ${bytes(e.bytes)}`;
      if (e.event === 'failed') return `${e.job} → ${e.to} failed: ${e.error}`;
      return e.event;
    case 'balancer': return `${e.action}${e.job ? ' ' + e.job : ''}${e.to ? ' → ' + e.to : ''}: ${e.reason || ''}`;
    default: return JSON.stringify(e);
  }
}

// Each node's events arrive in that node's order, but the nodes' streams interleave: the
// timeline is kept newest first by the events' own times (ISO 8601 UTC strings sort as text).
function addToTimeline(e) {
  const t = e.time || '';
  let i = 0;
  while (i < state.timeline.length && (state.timeline[i].time || '') > t) i++;
  state.timeline.splice(i, 0, e);
  if (state.timeline.length > TIMELINE_MAX) state.timeline.pop();
}

function onEvent(e) {
  addToTimeline(e);
  if (e.type === 'job') {
    const known = state.jobs.get(e.id);
    // The node a job left reports it ended there; the running copy on its new node is true.
    if (!(known && known.state === 'running' && e.state !== 'running' && known.node !== e.node && !state.leaving.has(e.id))) {
      state.jobs.set(e.id, e);
    }
  } else if (e.type === 'node') {
    const node = state.nodes.get(e.name);
    if (node) node.state = e.state;
  } else if (e.type === 'balancer' && e.action === 'migrate') {
    state.pendingWhy.set(e.job, e);
  } else if (e.type === 'migration') {
    const old = state.migrations.get(e.id) || {};
    if (e.event === 'started') {
      const why = state.pendingWhy.get(e.job);
      const byBalancer = why && why.to === e.to;
      state.pendingWhy.delete(e.job);
      state.migrations.set(e.id, { ...old, id: e.id, job: e.job, from: e.from, to: e.to, mode: e.mode,
        outcome: 'running', started_at: e.time, kind: byBalancer ? why.kind : 'manual',
        reason: byBalancer ? why.reason : 'asked for by a user (tern migrate or the dashboard)' });
      state.leaving.set(e.job, e.to);
    } else if (e.event === 'moved') {
      state.migrations.set(e.id, { ...old, id: e.id, job: e.job, from: e.from, to: e.to, mode: e.mode,
        outcome: 'moved', ended_at: e.time, freeze_ms: e.freeze_ms, total_ms: e.total_ms, bytes: e.bytes,
        phases_ms: e.phases_ms });
      state.leaving.delete(e.job);
      state.arrived.set(e.job, Date.now());
      const job = state.jobs.get(e.job);
      if (job) { job.node = e.to; job.state = 'running'; }
      loadJobs();
    } else if (e.event === 'failed') {
      state.migrations.set(e.id, { ...old, id: e.id, job: e.job, to: e.to, outcome: 'failed', ended_at: e.time, error: e.error });
      state.leaving.delete(e.job);
    }
  }
  scheduleRender();
}

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; render(); });
}

let eventSource = null;
function connect() {
  if (eventSource) eventSource.close();
  const source = new EventSource('/v1/events');
  eventSource = source;
  const handler = (message) => {
    let e;
    try { e = JSON.parse(message.data); } catch (_) { return; }
    onEvent(e);
  };
  for (const type of ['job', 'migration', 'node', 'balancer']) source.addEventListener(type, handler);
  source.onopen = () => {
    state.connected = true;
    // After a reconnect the state may have moved on without events we kept: read it again.
    loadNodes(); loadJobs(); loadMigrations();
    renderConnection();
  };
  source.onerror = () => {
    state.connected = false;
    renderConnection();
    // EventSource retries by itself unless the server refused it outright.
    if (source.readyState === EventSource.CLOSED && source === eventSource) setTimeout(connect, 2000);
  };
}

// ---------------------------------------------------------------- rendering

function renderConnection() {
  const c = $('#conn');
  c.className = 'conn ' + (state.connected ? 'up' : 'down');
  c.title = state.connected ? 'live: following the cluster’s events' : 'reconnecting to the agent…';
  document.body.dataset.connected = state.connected ? 'yes' : 'no';
}

function render() {
  renderConnection();
  const running = [...state.jobs.values()].filter((j) => j.state === 'running').length;
  $('#summary').textContent = `${state.nodes.size} nodes · ${running} jobs running`;
  if (location.hash.startsWith('#/job/')) return renderJobPage();
  renderNodes();
  renderMigrations();
  renderTimeline();
}

function chartFor(name, container) {
  let chart = state.charts.get(name);
  const s = state.series.get(name) || { t: [], cpu: [], mem: [] };
  const data = [s.t, s.cpu, s.mem];
  const width = Math.max(200, container.clientWidth || 300);
  if (!chart || !container.contains(chart.root)) {
    if (chart) chart.destroy();
    if (typeof uPlot === 'undefined') return;
    chart = new uPlot({
      width, height: 110, legend: { show: true }, cursor: { show: true },
      scales: { y: { range: [0, 100] } },
      axes: [{ stroke: '#8b98a5', grid: { stroke: '#2a3542' }, size: 24 },
             { stroke: '#8b98a5', grid: { stroke: '#2a3542' }, size: 46, values: (u, v) => v.map((x) => x + '%') }],
      series: [{}, { label: 'CPU', stroke: '#4aa3ff', width: 1.5, fill: 'rgba(74,163,255,.12)' },
               { label: 'mem', stroke: '#c58af9', width: 1.5 }],
    }, data, container);
    state.charts.set(name, chart);
  } else {
    if (Math.abs(chart.width - width) > 4) chart.setSize({ width, height: 110 });
    chart.setData(data);
  }
}

function jobChip(job) {
  const chip = el('li', { class: 'job', 'data-job': job.id, title: `${job.name} (${job.user})`, text: job.id,
    onclick: () => { location.hash = '#/job/' + encodeURIComponent(job.id); } });
  if (state.leaving.has(job.id)) { chip.classList.add('leaving'); chip.dataset.to = state.leaving.get(job.id); }
  const arrived = state.arrived.get(job.id);
  if (arrived && Date.now() - arrived < 1500) chip.classList.add('arrived');
  return chip;
}

function renderNodes() {
  const box = $('#nodes');
  const names = [...state.nodes.keys()].sort();
  for (const card of [...box.children]) if (!state.nodes.has(card.dataset.node)) card.remove();
  for (const name of names) {
    const node = state.nodes.get(name);
    let card = box.querySelector(`[data-node="${CSS.escape(name)}"]`);
    if (!card) {
      card = el('article', { class: 'node', 'data-node': name },
        el('h2', {}, el('span', { class: 'name', text: name }), el('span', { class: 'state' })),
        el('div', { class: 'figures' }),
        el('div', { class: 'bar cpu' }, el('span')),
        el('div', { class: 'bar mem' }, el('span')),
        el('div', { class: 'chart' }),
        el('ul', { class: 'jobs' }),
        el('div', { class: 'actions' }, el('button', { type: 'button', class: 'drain' })));
      box.append(card);
      card.querySelector('button.drain').addEventListener('click', () => {
        const draining = state.nodes.get(name)?.draining;
        act(`${draining ? 'undrain' : 'drain'} ${name}`, 'POST', `/v1/nodes/${encodeURIComponent(name)}/${draining ? 'undrain' : 'drain'}`)
          .then(loadNodes);
      });
    }
    card.className = 'node ' + node.state + (node.draining ? ' draining' : '');
    card.querySelector('.state').textContent = node.state + (node.draining ? ' · draining' : '') + (node.self ? ' · this agent' : '');
    const cap = node.capacity || node.cpus || 0;
    const jobs = [...state.jobs.values()].filter((j) => j.node === name && j.state === 'running')
      .sort((a, b) => a.id.localeCompare(b.id));
    // The node's own figures (its cgroup and its jobs): host-wide load is the same on every
    // node of a local cluster, so it is not shown.
    card.querySelector('.figures').replaceChildren(
      el('span', { text: `CPU ${Number(node.demand || 0).toFixed(2)} of ${Number(cap).toFixed(1)}` }),
      el('span', { text: `mem ${bytes(node.mem_used_bytes)} of ${bytes(node.mem_limit_bytes)}` }),
      el('span', { text: `${jobs.length} job${jobs.length === 1 ? '' : 's'}` }));
    card.querySelector('.bar.cpu span').style.width = Math.min(100, cap ? (100 * node.demand) / cap : 0) + '%';
    card.querySelector('.bar.mem span').style.width =
      Math.min(100, node.mem_limit_bytes ? (100 * node.mem_used_bytes) / node.mem_limit_bytes : 0) + '%';
    card.querySelector('button.drain').textContent = node.draining ? 'undrain' : 'drain';
    card.querySelector('.jobs').replaceChildren(...jobs.map(jobChip));
    chartFor(name, card.querySelector('.chart'));
  }
}

function migrationRow(m, withJob) {
  const tr = el('tr', { class: m.outcome || '', 'data-migration': m.id, 'data-job': m.job || '' });
  const cells = [clock(m.started_at || m.ended_at)];
  if (withJob) cells.push(null);
  cells.push(`${m.from || '?'} → ${m.to || '?'}`, m.outcome === 'running' ? 'moving…' : m.outcome,
    ms(m.freeze_ms), ms(m.total_ms), bytes(m.bytes));
  if (withJob) cells.push(m.mode || '');
  for (const c of cells) {
    if (c === null) {
      tr.append(el('td', {}, el('a', { href: '#/job/' + encodeURIComponent(m.job), text: m.job })));
    } else {
      tr.append(el('td', { text: c, class: c === m.outcome || c === 'moving…' ? 'outcome' : '' }));
    }
  }
  const why = m.outcome === 'failed' ? `${m.kind || ''} ${m.reason || ''} — ${m.error || ''}` : `${m.kind || ''}: ${m.reason || ''}`;
  tr.append(el('td', { class: 'why', text: why.trim() }));
  return tr;
}

function sortedMigrations() {
  return [...state.migrations.values()].sort((a, b) =>
    (b.started_at || b.ended_at || '').localeCompare(a.started_at || a.ended_at || ''));
}

function renderMigrations() {
  const rows = sortedMigrations().slice(0, 30).map((m) => migrationRow(m, true));
  $('#migrations tbody').replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { colspan: 9, text: 'no migrations yet' }))]));
}

function renderTimeline() {
  const filter = $('#timeline-filter').value;
  const items = state.timeline.filter((e) => !filter || e.type === filter).slice(0, 150).map((e) => {
    const bad = (e.type === 'migration' && e.event === 'failed') || (e.type === 'job' && (e.state === 'failed' || e.state === 'lost')) ||
      (e.type === 'balancer' && e.action === 'failed') || (e.type === 'node' && e.state !== 'alive');
    return el('li', { 'data-type': e.type, class: bad ? 'bad' : '' },
      el('span', { class: 't', text: clock(e.time) }), el('span', { class: 'n', text: e.node }),
      el('span', { class: 'ty ty-' + e.type, text: e.type + (e.event ? ' ' + e.event : e.action ? ' ' + e.action : '') }),
      el('span', { class: 'd', text: describe(e) }));
  });
  $('#timeline').replaceChildren(...items);
}

// ---------------------------------------------------------------- job page

let jobPageFor = null;
async function renderJobPage() {
  const id = decodeURIComponent(location.hash.slice('#/job/'.length));
  $('#overview').hidden = true;
  $('#job-page').hidden = false;
  const job = state.jobs.get(id);
  $('#job-title').textContent = 'Job ' + id + (job ? ` — ${job.name}` : '');
  if (job) {
    $('#job-facts').replaceChildren(...[
      ['state', job.state], ['node', job.node], ['home node', job.home_node], ['user', job.user],
      ['command', (job.argv || []).join(' ')], ['started', clock(job.started_at)],
      ['CPU', `${Number(job.cpu_seconds || 0).toFixed(1)} s`], ['memory', bytes(job.rss_bytes)],
      ['pinned', job.pinned ? 'yes' : 'no']].flatMap(([k, v]) => [el('span', { class: 'k', text: k }), el('span', { text: v ?? '–' })]));
    const target = $('#job-target');
    const others = [...state.nodes.values()].filter((n) => n.name !== job.node && n.state === 'alive').map((n) => n.name).sort();
    if ([...target.options].map((o) => o.value).join() !== others.join()) {
      target.replaceChildren(...others.map((n) => el('option', { value: n, text: n })));
    }
    const path = [job.home_node];
    const moves = (job.migrations || []);
    for (const m of moves) path.push(m.to);
    if (path[path.length - 1] !== job.node) path.push(job.node);
    $('#job-path').replaceChildren(...path.filter(Boolean).map((n) => el('li', { text: n })));
  }
  const mine = sortedMigrations().filter((m) => m.job === id);
  $('#job-migrations tbody').replaceChildren(...(mine.length ? mine.map((m) => migrationRow(m, false))
    : [el('tr', {}, el('td', { colspan: 7, text: 'none' }))]));
  if (jobPageFor !== id) {
    jobPageFor = id;
    loadLog(id);
  }
}

async function loadLog(id) {
  $('#job-log').textContent = '';
  $('#job-log-note').textContent = '';
  try {
    const response = await fetch(`/v1/jobs/${encodeURIComponent(id)}/logs?stream=stdout`,
      { headers: token() ? { Authorization: 'Bearer ' + token() } : {} });
    const text = await response.text();
    if (!response.ok) {
      let message = text;
      try { message = JSON.parse(text).error; } catch (_) { /* plain text */ }
      $('#job-log-note').textContent = '(' + message + ')';
      return;
    }
    $('#job-log').textContent = text.split('\n').slice(-40).join('\n');
  } catch (error) {
    $('#job-log-note').textContent = '(' + error.message + ')';
  }
}

function route() {
  if (location.hash.startsWith('#/job/')) {
    jobPageFor = null;
    render();
  } else {
    $('#overview').hidden = false;
    $('#job-page').hidden = true;
    render();
  }
}

// ---------------------------------------------------------------- start

$('#job-migrate').addEventListener('click', async () => {
  const id = decodeURIComponent(location.hash.slice('#/job/'.length));
  const node = $('#job-target').value;
  if (!node) return notice('no other node to move to');
  notice(`moving ${id} to ${node}…`, true);
  const answer = await act(`migrate ${id} to ${node}`, 'POST', `/v1/jobs/${encodeURIComponent(id)}/migrate`, { node });
  if (answer) loadJobs();
});
$('#job-cancel').addEventListener('click', async () => {
  const id = decodeURIComponent(location.hash.slice('#/job/'.length));
  if (!confirm(`cancel job ${id}?`)) return;
  if (await act(`cancel ${id}`, 'POST', `/v1/jobs/${encodeURIComponent(id)}/cancel`)) loadJobs();
});
$('#token-button').addEventListener('click', () => { $('#token-input').value = token(); $('#token-dialog').showModal(); });
$('#token-dialog').addEventListener('close', () => {
  if ($('#token-dialog').returnValue === 'save') { setToken($('#token-input').value.trim()); location.reload(); }
});
$('#timeline-filter').addEventListener('change', renderTimeline);
// An address with another token opened in this tab is only a fragment change, not a load:
// take the token and reconnect, so that the event stream carries the new token's rights.
window.addEventListener('hashchange', () => {
  if (takeTokenFromAddress()) connect();
  route();
});
window.addEventListener('resize', scheduleRender);
setInterval(loadNodes, NODE_POLL_MS);
setInterval(loadJobs, 10000);
loadNodes();
loadJobs();
loadMigrations();
connect();
route();
