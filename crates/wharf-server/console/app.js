// The wharf console: one module over the management API, no dependencies. Pages are built with
// DOM calls (never HTML from data), so nothing an API returns can run as script. The session is
// a cookie this script cannot read; every call carries the X-Wharf-Console header the server asks
// of cookie-authenticated calls.

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const statusLine = document.getElementById('status');

let session = null;
let system = null;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Thrown when the session ended mid-page; the sign-in page is already shown. */
class SessionEnded extends Error {}

const enc = encodeURIComponent;
/** A repository path: each segment encoded, the slashes kept. */
const encPath = (p) => p.split('/').map(enc).join('/');

async function api(method, path, body) {
  const headers = { 'X-Wharf-Console': '1', Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 401 && path !== '/console/session') {
    session = null;
    signIn('Your session ended: the key is unknown, revoked or expired. Sign in again.');
    throw new SessionEnded('session ended');
  }
  if (r.status === 204) return null;
  const data = await r.json().catch(() => null);
  if (!r.ok) throw new ApiError(r.status, (data && data.detail) || `HTTP ${r.status}`);
  return data;
}

/** An element with attributes (on* are listeners) and children (strings become text). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** Replaces the page's content; absent parts (null, false) are left out. */
function show(...parts) {
  main.replaceChildren(...parts.flat(Infinity).filter((p) => p !== null && p !== undefined && p !== false));
}

const can = (permission) =>
  !!session && (session.permissions.includes('owner') || session.permissions.includes(permission));

/** Runs a button's action; what the API refuses is said, not lost. */
function act(work) {
  return async () => {
    try {
      await work();
    } catch (x) {
      if (!(x instanceof SessionEnded)) say(x.message);
    }
  };
}

function say(text) {
  statusLine.textContent = text;
  setTimeout(() => {
    if (statusLine.textContent === text) statusLine.textContent = '';
  }, 4000);
}

function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

const when = (t) => (t ? t.replace('T', ' ').replace(/\.\d+Z$|Z$/, ' UTC') : '—');

/** A titled panel: a section named by its heading (`id` ties the two together). */
function panel(id, title, ...children) {
  return h('section', { class: 'panel', 'aria-labelledby': id }, h('h2', { id }, title), children);
}

/** A table that becomes labelled cards at phone width. */
function table(heads, rows, empty, caption) {
  if (!rows.length) return h('p', { class: 'muted' }, empty);
  return h(
    'table',
    { class: 'responsive' },
    caption ? h('caption', { class: 'muted' }, caption) : null,
    h('thead', {}, h('tr', {}, heads.map((x) => h('th', { scope: 'col' }, x)))),
    h(
      'tbody',
      {},
      rows.map((cells) =>
        h('tr', {}, cells.map((c, i) => h('td', { 'data-label': heads[i] }, c))),
      ),
    ),
  );
}

function severityBadge(scan) {
  if (!scan) return h('span', { class: 'muted' }, '—');
  if (scan.status === 'pending') return h('span', { class: 'badge pending' }, 'scan pending');
  if (scan.status === 'unknown') return h('span', { class: 'badge', title: scan.reason || '' }, 'unknown');
  if (!scan.highest_severity) return h('span', { class: 'badge none' }, 'no findings');
  const s = scan.highest_severity.toLowerCase();
  const n = (scan.summary && scan.summary[scan.highest_severity]) || '';
  return h('span', { class: `badge ${s}` }, `${s}${n ? ` ×${n}` : ''}`);
}

/** A labelled field; its error line sits right under it. */
function field(id, label, input, hint) {
  input.id = id;
  const error = h('p', { class: 'error', id: `${id}-error`, role: 'alert' });
  const described = [hint ? `${id}-hint` : null, `${id}-error`].filter(Boolean).join(' ');
  input.setAttribute('aria-describedby', described);
  return {
    el: h(
      'div',
      { class: 'field' },
      h('label', { for: id }, label),
      input,
      hint ? h('span', { class: 'hint', id: `${id}-hint` }, hint) : null,
      error,
    ),
    error,
    input,
  };
}

/** Shows `text` with a copy button. */
function copyable(label, text) {
  const id = `copy-${label.toLowerCase().replace(/[^a-z]+/g, '-')}`;
  return h(
    'div',
    {},
    h('h3', { id }, label),
    h(
      'div',
      { class: 'copyable' },
      h('pre', { 'aria-labelledby': id }, text),
      h(
        'button',
        {
          type: 'button',
          class: 'secondary',
          'aria-label': `Copy ${label}`,
          onclick: async () => {
            try {
              await navigator.clipboard.writeText(text);
              say(`${label} copied`);
            } catch {
              say('Copying is not allowed here; select the text instead');
            }
          },
        },
        'Copy',
      ),
    ),
  );
}

// --- Sign-in ---

function signIn(message) {
  nav.hidden = true;
  const key = field(
    'key',
    'Administrator key',
    h('input', { type: 'password', name: 'key', autocomplete: 'off', required: true }),
    'Kept by the browser for this session only, in a cookie this page cannot read.',
  );
  key.error.textContent = message || '';
  const form = h(
    'form',
    {
      class: 'panel',
      onsubmit: async (e) => {
        e.preventDefault();
        key.error.textContent = '';
        try {
          session = await api('POST', '/console/session', { key: key.input.value });
          key.input.value = '';
          await route();
        } catch (x) {
          key.error.textContent = x.message;
          key.input.focus();
        }
      },
    },
    key.el,
    h('button', { type: 'submit' }, 'Sign in'),
  );
  show(h('h1', {}, 'Sign in to wharf'), form);
  key.input.focus();
}

async function signOut() {
  await fetch('/console/session', { method: 'DELETE', headers: { 'X-Wharf-Console': '1' } });
  session = null;
  signIn('Signed out.');
}

// --- Registries ---

/** Why a registry name is refused, as the API would say; empty when it is fine. */
function registryNameProblem(name) {
  if (!name) return 'A name is needed.';
  const bad = [...name].find((c) => !/[a-z0-9-]/.test(c));
  if (bad) return `“${bad}” is not allowed: use a–z, 0–9 and “-”.`;
  if (name.length < 3) return `At least 3 characters (${name.length} so far).`;
  if (name.length > 63) return `At most 63 characters (${name.length}).`;
  if (!/^[a-z]/.test(name)) return 'It must start with a letter.';
  if (name.endsWith('-')) return 'It must not end with “-”.';
  return '';
}

function gcText(r) {
  if (!r.gc_schedule) return 'on demand';
  return r.gc_next_run ? `next ${when(r.gc_next_run)}` : 'scheduled';
}

async function registriesView() {
  const [page, sys] = await Promise.all([
    api('GET', '/api/v1/registries?limit=100'),
    system ? Promise.resolve(system) : api('GET', '/api/v1/system'),
  ]);
  system = sys;
  const rows = page.items.map((r) => [
    h('a', { href: `#/r/${enc(r.name)}` }, r.name),
    r.location,
    bytes(r.storage_bytes),
    r.repository_count,
    r.artifact_count,
    r.scanning ? 'on' : 'off',
    gcText(r),
  ]);
  show(
    h('h1', {}, 'Registries'),
    table(
      ['Name', 'Location', 'Storage', 'Repositories', 'Artifacts', 'Scanning', 'Garbage collection'],
      rows,
      'No registries yet.',
    ),
    can('registry:write') ? createRegistryForm() : null,
  );
}

function createRegistryForm() {
  const name = field(
    'registry-name',
    'Name',
    h('input', { type: 'text', autocomplete: 'off', required: true }),
    '3–63 characters: a–z, 0–9 and “-”, starting with a letter. Clients reach it at <name>.' +
      system.base_domain,
  );
  name.input.addEventListener('input', () => {
    name.error.textContent = registryNameProblem(name.input.value);
  });
  const place = field(
    'registry-location',
    'Location',
    h('select', {}, system.locations.map((l) => h('option', { value: l }, l))),
    'Where its content is kept; fixed once created.',
  );
  const scanning = h('input', { type: 'checkbox', id: 'registry-scanning' });
  const form = h(
    'form',
    {
      class: 'inline',
      onsubmit: async (e) => {
        e.preventDefault();
        const problem = registryNameProblem(name.input.value);
        name.error.textContent = problem;
        place.error.textContent = '';
        if (problem) return name.input.focus();
        try {
          const r = await api('POST', '/api/v1/registries', {
            name: name.input.value,
            location: place.input.value,
            scanning: scanning.checked,
          });
          say(`Registry ${r.name} created`);
          location.hash = `#/r/${enc(r.name)}`;
        } catch (x) {
          if (x instanceof SessionEnded) return;
          const target = /location/i.test(x.message) ? place : name;
          target.error.textContent = x.message;
          target.input.focus();
        }
      },
    },
    name.el,
    place.el,
    h('div', { class: 'checks' }, scanning, h('label', { for: 'registry-scanning' }, 'Scan pushed images')),
    h('button', { type: 'submit' }, 'Create registry'),
  );
  return panel('new-registry', 'New registry', form);
}

// --- One registry ---

function scopeText(s) {
  if (s.type === 'registry') return 'registry (catalog)';
  return `${s.path} — ${s.actions.join(', ')}`;
}

async function registryView(name) {
  const base = `/api/v1/registries/${enc(name)}`;
  const [r, repos, tokens, storage] = await Promise.all([
    api('GET', base),
    api('GET', `${base}/repositories?limit=100`),
    api('GET', `${base}/tokens?limit=100`),
    api('GET', `${base}/storage?days=30`),
  ]);
  const refresh = () => registryView(name);
  const props = h(
    'dl',
    { class: 'props' },
    h('dt', {}, 'Host name'), h('dd', { class: 'mono' }, r.hostname),
    h('dt', {}, 'Location'), h('dd', {}, r.location),
    h('dt', {}, 'Storage'), h('dd', {}, `${bytes(r.storage_bytes)}${r.quota_bytes ? ` of ${bytes(r.quota_bytes)}` : ''}`),
    h('dt', {}, 'Repositories'), h('dd', {}, r.repository_count),
    h('dt', {}, 'Artifacts'), h('dd', {}, r.artifact_count),
    h('dt', {}, 'Scanning'), h('dd', {}, r.scanning ? 'on' : 'off'),
    h('dt', {}, 'Garbage collection'), h('dd', {}, gcText(r)),
    h('dt', {}, 'Maintenance'), h('dd', {}, r.read_only ? 'read-only' : 'no'),
    h('dt', {}, 'Untagged manifests'), h('dd', {}, r.gc_untagged ? 'collected' : 'kept'),
    h('dt', {}, 'Rate limit'), h('dd', {}, r.rate_limit === null ? 'server default' : r.rate_limit === 0 ? 'none' : `${r.rate_limit} requests/s per token`),
    h('dt', {}, 'Keys'), h('dd', {}, r.own_key ? `its own master key (${r.own_key})` : "the instance's master key"),
    h('dt', {}, 'Created'), h('dd', {}, when(r.created_at)),
  );
  const scanSwitch =
    !r.scanning && can('registry:write')
      ? h(
          'button',
          {
            type: 'button',
            class: 'secondary',
            onclick: act(async () => {
              await api('PATCH', base, { scanning: true });
              await refresh();
              say('Scanning is on; what was pushed before is being scanned');
            }),
          },
          'Turn scanning on',
        )
      : null;
  const repoRows = repos.items.map((p) => [
    h('a', { href: `#/r/${enc(name)}/repo/${encPath(p.name)}` }, p.name),
    p.artifact_count,
    p.tag_count,
    bytes(p.storage_bytes),
    severityBadge(p.latest_artifact && p.latest_artifact.scan),
  ]);
  const tokenRows = tokens.items.map((t) => [
    t.name,
    h('div', {},
      h('ul', { class: 'plain' }, t.scopes.map((s) => h('li', {}, scopeText(s), ' ',
        can('registry:write') && t.scopes.length > 1
          ? h('button', {
              type: 'button',
              class: 'link',
              'aria-label': `Remove scope ${scopeText(s)} from ${t.name}`,
              onclick: act(async () => {
                await api('DELETE', `${base}/tokens/${enc(t.name)}/scopes/${s.id}`);
                await refresh();
                say(`Scope removed from ${t.name}`);
              }),
            }, 'remove')
          : null))),
      can('registry:write') ? addScopeForm(base, t, refresh) : null),
    when(t.expires_at),
    t.enabled ? 'enabled' : 'disabled',
    can('registry:write')
      ? h(
          'div',
          { class: 'actions' },
          h(
            'button',
            {
              type: 'button',
              class: 'secondary',
              onclick: act(async () => {
                await api('PATCH', `${base}/tokens/${enc(t.name)}`, { enabled: !t.enabled });
                await refresh();
                say(`Token ${t.name} ${t.enabled ? 'disabled' : 'enabled'}`);
              }),
            },
            t.enabled ? `Disable ${t.name}` : `Enable ${t.name}`,
          ),
          h(
            'button',
            {
              type: 'button',
              class: 'danger',
              onclick: act(async () => {
                if (!window.confirm(`Delete token ${t.name}? Clients using it are refused at once.`)) return;
                await api('DELETE', `${base}/tokens/${enc(t.name)}`);
                await refresh();
                say(`Token ${t.name} deleted`);
              }),
            },
            `Delete ${t.name}`,
          ),
        )
      : '',
  ]);
  const maintenance =
    can('registry:write')
      ? h(
          'button',
          {
            type: 'button',
            class: 'secondary',
            onclick: act(async () => {
              await api('PATCH', base, { read_only: !r.read_only });
              await refresh();
              say(r.read_only ? 'Maintenance ended' : 'Read-only for maintenance');
            }),
          },
          r.read_only ? 'End maintenance' : 'Start maintenance (read-only)',
        )
      : null;
  show(
    h('p', { class: 'crumbs' }, h('a', { href: '#/registries' }, 'Registries'), ' / ', name),
    h('h1', {}, `Registry ${name}`),
    h('section', { class: 'panel', 'aria-label': 'Properties' }, props, h('div', { class: 'actions' }, scanSwitch, maintenance)),
    can('registry:write') ? settingsForm(r, refresh) : null,
    storageChart(storage),
    cveSearch(name),
    h('h2', {}, 'Repositories'),
    table(['Repository', 'Artifacts', 'Tags', 'Storage', 'Latest artifact'], repoRows, 'Nothing pushed yet.'),
    findingsChart(repos.items),
    h('h2', {}, 'Tokens'),
    table(['Name', 'Scopes', 'Expires', 'State', 'Actions'], tokenRows, 'No tokens yet.'),
    can('registry:write') ? createTokenForm(r, refresh) : null,
    await gcSection(r, refresh),
    await upstreamsSection(name, refresh),
    can('registry:delete') ? deleteRegistryForm(name) : null,
  );
}

/** Quota, rate limit and untagged collection: the registry's settings that take a value. */
function settingsForm(r, refresh) {
  const gib = r.quota_bytes ? String(r.quota_bytes / 2 ** 30) : '';
  const quota = field('set-quota', 'Storage quota (GiB, empty: none)', h('input', { type: 'text', inputmode: 'decimal', value: gib, autocomplete: 'off' }));
  const rate = field('set-rate', 'Requests per second per token (empty: server default, 0: none)', h('input', { type: 'text', inputmode: 'numeric', value: r.rate_limit === null ? '' : String(r.rate_limit), autocomplete: 'off' }));
  const untagged = h('input', { type: 'checkbox', id: 'set-untagged', checked: r.gc_untagged });
  const form = h('form', {
    class: 'inline',
    onsubmit: async (e) => {
      e.preventDefault();
      quota.error.textContent = '';
      rate.error.textContent = '';
      const q = quota.input.value.trim();
      const n = rate.input.value.trim();
      if (q && !(Number(q) > 0)) {
        quota.error.textContent = 'A positive number of GiB, or empty for no quota.';
        return quota.input.focus();
      }
      if (n && !/^\d+$/.test(n)) {
        rate.error.textContent = 'A whole number, or empty for the server default.';
        return rate.input.focus();
      }
      try {
        await api('PATCH', `/api/v1/registries/${enc(r.name)}`, {
          quota_bytes: q ? Math.round(Number(q) * 2 ** 30) : null,
          rate_limit: n ? Number(n) : null,
          gc_untagged: untagged.checked,
        });
        await refresh();
        say('Settings saved');
      } catch (x) {
        if (x instanceof SessionEnded) return;
        (/rate/i.test(x.message) ? rate : quota).error.textContent = x.message;
      }
    },
  }, quota.el, rate.el, h('div', { class: 'checks' }, untagged, h('label', { for: 'set-untagged' }, 'Collect untagged manifests')),
  h('button', { type: 'submit' }, 'Save settings'));
  return panel('settings-title', 'Settings', form);
}

// --- The instance ---

async function systemView() {
  const [sys, vulndb] = await Promise.all([api('GET', '/api/v1/system'), api('GET', '/api/v1/system/vulndb')]);
  const keys = can('owner') ? await api('GET', '/api/v1/admin-keys?limit=100') : null;
  const refresh = () => systemView();
  const gcReportLine = h('p', { role: 'status', id: 'instance-gc-report' });
  const keyRows = keys
    ? keys.items.map((k) => [
        k.name, h('code', {}, k.prefix), k.permissions.join(', '), when(k.created_at), k.revoked_at ? `revoked ${when(k.revoked_at)}` : 'active',
        k.revoked_at ? '' : h('button', {
          type: 'button',
          class: 'danger',
          onclick: act(async () => {
            if (!window.confirm(`Revoke the key ${k.name}? Whoever uses it is refused at once.`)) return;
            await api('DELETE', `/api/v1/admin-keys/${k.id}`);
            await refresh();
            say(`Key ${k.name} revoked`);
          }),
        }, `Revoke ${k.name}`),
      ])
    : [];
  let newKey = null;
  if (keys) {
    const name = field('key-name', 'Key name', h('input', { type: 'text', autocomplete: 'off' }), 'Like a registry name, e.g. alice-laptop.');
    const perms = ['registry:read', 'registry:write', 'registry:delete', 'owner'];
    const boxes = h('fieldset', {}, h('legend', {}, 'Permissions'), h('div', { class: 'checks' }, perms.map((p) => [
      h('input', { type: 'checkbox', id: `perm-${p.replace(':', '-')}`, value: p, checked: p === 'registry:read' }),
      h('label', { for: `perm-${p.replace(':', '-')}` }, p)])));
    newKey = h('form', {
      class: 'inline',
      onsubmit: async (e) => {
        e.preventDefault();
        name.error.textContent = registryNameProblem(name.input.value);
        if (name.error.textContent) return name.input.focus();
        const chosen = perms.filter((p) => document.getElementById(`perm-${p.replace(':', '-')}`).checked);
        try {
          const k = await api('POST', '/api/v1/admin-keys', { name: name.input.value, permissions: chosen });
          const dialog = h('dialog', { 'aria-labelledby': 'key-title' },
            h('h2', { id: 'key-title' }, `Key ${k.name} created`),
            h('p', {}, 'Copy it now: it is shown only this once.'),
            copyable('Administrator key', k.secret),
            h('button', { type: 'button', onclick: () => dialog.close() }, 'Done'));
          dialog.addEventListener('close', () => {
            dialog.remove();
            refresh();
          });
          document.body.append(dialog);
          dialog.showModal();
        } catch (x) {
          if (!(x instanceof SessionEnded)) name.error.textContent = x.message;
        }
      },
    }, name.el, boxes, h('button', { type: 'submit' }, 'Create key'));
  }
  show(
    h('h1', {}, 'System'),
    h('section', { class: 'panel', 'aria-label': 'Instance' }, h('dl', { class: 'props' },
      h('dt', {}, 'Version'), h('dd', {}, sys.version),
      h('dt', {}, 'Storage'), h('dd', {}, `${sys.storage}, ${bytes(sys.stored_bytes)} stored`),
      h('dt', {}, 'Encryption'), h('dd', {}, sys.encryption.enabled ? `on (master key ${sys.encryption.key_id}): ${sys.encryption.covers.join(', ')}` : 'off'),
      h('dt', {}, 'Locations'), h('dd', {}, sys.locations.join(', ')),
      h('dt', {}, 'Registry host names'), h('dd', { class: 'mono' }, `<name>.${sys.base_domain}`))),
    h('h2', {}, 'Vulnerability data'),
    h('p', {}, `${vulndb.advisories} advisories, ${vulndb.scores} scores; last changed ${when(vulndb.changed_at)}.`),
    table(['Source', 'Kind', 'Records', 'Newest', 'Imported'], vulndb.sources.map((v) => [v.source, v.kind, v.records, when(v.newest), when(v.imported_at)]), 'Nothing imported yet: wharf vulndb import, or configure --vulndb-source.'),
    can('registry:write') ? panel('instance-gc', 'Garbage collection of the whole instance', h('p', {}, 'Frees what deleted registries and repositories left behind.'),
      h('button', { type: 'button', onclick: act(async () => {
        gcReportLine.textContent = 'Collecting…';
        let run = await api('POST', '/api/v1/system/gc', { dry_run: false });
        while (run.status === 'running') {
          await new Promise((res) => setTimeout(res, 500));
          run = await api('GET', `/api/v1/system/gc/runs/${run.id}`);
        }
        gcReportLine.textContent = `Run ${run.id} ${gcReport(run)}`;
      }) }, 'Collect now'), gcReportLine) : null,
    keys ? h('h2', {}, 'Administrator keys') : null,
    keys ? table(['Name', 'Starts with', 'Permissions', 'Created', 'State', 'Actions'], keyRows, 'No keys.') : null,
    newKey ? h('section', { class: 'panel', 'aria-label': 'New administrator key' }, newKey) : null,
  );
}

// --- Vulnerabilities ---

const SEVERITIES = ['critical', 'high', 'medium', 'low', 'none', 'unknown'];

/** An SVG element (charts are drawn by hand: a few shapes, no library). */
function svg(tag, attrs, ...kids) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...kids);
  return el;
}

/** The registry's storage over the last 30 days as a line, with its samples as a table. */
function storageChart(history) {
  const points = history.samples.map((p) => ({ t: Date.parse(p.at), bytes: p.bytes }));
  const width = 640;
  const height = 180;
  const left = 70;
  const bottom = 24;
  const t0 = points[0].t;
  const t1 = Math.max(points[points.length - 1].t, t0 + 1);
  const most = Math.max(1, ...points.map((p) => p.bytes));
  const x = (t) => left + ((width - left - 10) * (t - t0)) / (t1 - t0);
  const y = (b) => height - bottom - ((height - bottom - 10) * b) / most;
  const path = points.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.bytes).toFixed(1)}`).join(' ');
  const day = (t) => new Date(t).toISOString().slice(0, 10);
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-labelledby': 'storage-title', class: 'chart' },
    svg('title', { id: 'storage-title' }, `Storage used, ${day(t0)} to ${day(t1)}: now ${bytes(points[points.length - 1].bytes)}`),
    svg('line', { x1: left, y1: height - bottom, x2: width - 10, y2: height - bottom, stroke: '#4a5561' }),
    svg('line', { x1: left, y1: 10, x2: left, y2: height - bottom, stroke: '#4a5561' }),
    svg('text', { x: left - 6, y: 16, 'text-anchor': 'end', 'font-size': 12, fill: '#17202a' }, bytes(most)),
    svg('text', { x: left - 6, y: height - bottom, 'text-anchor': 'end', 'font-size': 12, fill: '#17202a' }, '0'),
    svg('text', { x: left, y: height - 6, 'font-size': 12, fill: '#17202a' }, day(t0)),
    svg('text', { x: width - 10, y: height - 6, 'text-anchor': 'end', 'font-size': 12, fill: '#17202a' }, day(t1)),
    svg('path', { d: path, fill: 'none', stroke: '#0b5cad', 'stroke-width': 2 }),
    points.length === 1 ? svg('circle', { cx: x(points[0].t), cy: y(points[0].bytes), r: 3, fill: '#0b5cad' }) : '');
  const list = h('table', { class: 'sr-only' }, h('caption', {}, 'Storage samples'),
    points.map((p) => h('tr', {}, h('th', { scope: 'row' }, new Date(p.t).toISOString()), h('td', {}, bytes(p.bytes)))));
  return h('figure', { class: 'panel' }, h('figcaption', {}, h('strong', {}, 'Storage used'), ' over the last 30 days'), chart, list);
}

/** Findings by severity of each repository's latest artifact, as horizontal stacked bars. */
function findingsChart(repos) {
  const data = repos
    .filter((p) => p.latest_artifact && p.latest_artifact.scan && p.latest_artifact.scan.status === 'scanned')
    .map((p) => ({ name: p.name, counts: p.latest_artifact.scan.summary || {} }));
  if (!data.length) return null;
  const total = (d) => SEVERITIES.reduce((n, s) => n + (d.counts[s] || 0), 0);
  const most = Math.max(1, ...data.map(total));
  const colors = { critical: '#7a0a0a', high: '#a61b1b', medium: '#8a4b00', low: '#35586e', none: '#17663a', unknown: '#4a5561' };
  const rowH = 26;
  const width = 640;
  const label = 200;
  const chart = svg('svg', { viewBox: `0 0 ${width} ${data.length * rowH + 4}`, role: 'img', 'aria-labelledby': 'findings-title', class: 'chart' },
    svg('title', { id: 'findings-title' }, 'Findings by severity of each repository\'s latest artifact'));
  data.forEach((d, i) => {
    const y = i * rowH + 2;
    chart.append(svg('text', { x: 0, y: y + 16, 'font-size': 13, fill: '#17202a' }, d.name.length > 26 ? `${d.name.slice(0, 25)}…` : d.name));
    let x = label;
    for (const sev of SEVERITIES) {
      const n = d.counts[sev] || 0;
      if (!n) continue;
      const w = Math.max(2, ((width - label - 60) * n) / most);
      chart.append(svg('rect', { x, y: y + 3, width: w, height: rowH - 8, fill: colors[sev] }, svg('title', {}, `${sev}: ${n}`)));
      x += w;
    }
    chart.append(svg('text', { x: x + 6, y: y + 16, 'font-size': 13, fill: '#17202a' }, String(total(d))));
  });
  const legend = h('ul', { class: 'legend' }, SEVERITIES.map((s) => h('li', {}, h('span', { class: `badge ${s}` }, s))));
  const list = h('table', { class: 'sr-only' }, h('caption', {}, 'Findings by severity'),
    h('tr', {}, h('th', { scope: 'col' }, 'Repository'), SEVERITIES.map((s) => h('th', { scope: 'col' }, s))),
    data.map((d) => h('tr', {}, h('th', { scope: 'row' }, d.name), SEVERITIES.map((s) => h('td', {}, d.counts[s] || 0)))));
  return h('figure', { class: 'panel' }, h('figcaption', {}, h('strong', {}, 'Findings by severity'), ' (latest artifact of each repository)'), chart, legend, list);
}

function cveSearch(name) {
  const id = field('cve-id', 'Find a vulnerability in this registry', h('input', { type: 'text', placeholder: 'CVE-2024-3094', autocomplete: 'off' }), 'A CVE, GHSA or distribution advisory ID.');
  const form = h('form', {
    class: 'inline',
    role: 'search',
    onsubmit: (e) => {
      e.preventDefault();
      const v = id.input.value.trim();
      if (!v || /\s/.test(v)) {
        id.error.textContent = 'Give one ID, such as CVE-2024-3094.';
        return;
      }
      location.hash = `#/r/${enc(name)}/cve/${enc(v)}`;
    },
  }, id.el, h('button', { type: 'submit' }, 'Search'));
  return h('section', { class: 'panel', 'aria-label': 'Vulnerability search' }, form);
}

async function cveView(name, id) {
  const base = `/api/v1/registries/${enc(name)}`;
  const [affected, details] = await Promise.all([
    api('GET', `${base}/vulnerabilities/${enc(id)}?limit=100`),
    api('GET', `/api/v1/vulnerabilities/${enc(id)}`).catch((x) => {
      if (x instanceof SessionEnded) throw x;
      return null;
    }),
  ]);
  const rows = affected.items.map((a) => [
    h('a', { href: `#/r/${enc(name)}/a/${encPath(a.repository)}/-/${enc(a.digest)}` }, `${a.repository}@${a.digest.slice(7, 19)}`),
    a.package,
    a.installed,
    a.fixed || '—',
    severityBadge({ status: 'scanned', highest_severity: a.severity }),
  ]);
  show(
    h('p', { class: 'crumbs' }, h('a', { href: '#/registries' }, 'Registries'), ' / ', h('a', { href: `#/r/${enc(name)}` }, name), ' / ', id),
    h('h1', {}, id),
    details ? vulnerabilityDetails(details) : h('p', { class: 'muted' }, 'The vulnerability database has no details of this ID.'),
    h('h2', {}, `Artifacts of ${name} it affects`),
    table(['Artifact', 'Package', 'Installed', 'Fixed in', 'Severity'], rows, 'No artifact of this registry is affected.'),
  );
}

function vulnerabilityDetails(v) {
  return h('section', { class: 'panel', 'aria-label': 'Details' },
    v.summary ? h('p', {}, h('strong', {}, v.summary)) : null,
    v.description ? h('p', {}, v.description) : null,
    h('dl', { class: 'props' },
      h('dt', {}, 'Severity'), h('dd', {}, severityBadge({ status: 'scanned', highest_severity: v.severity }), v.score ? ` ${v.score}` : ''),
      h('dt', {}, 'Also known as'), h('dd', {}, v.aliases.length ? v.aliases.join(', ') : '—'),
      h('dt', {}, 'Published'), h('dd', {}, when(v.published)),
      h('dt', {}, 'Scores'), h('dd', {}, v.scores.length ? h('ul', { class: 'plain' }, v.scores.map((s) => h('li', {}, `${s.source} CVSS ${s.version}: ${s.score ?? '—'} `, s.vector ? h('code', {}, s.vector) : null))) : '—'),
      h('dt', {}, 'References'), h('dd', {}, v.references.length ? h('ul', { class: 'plain' }, v.references.slice(0, 10).map((u) => h('li', {}, /^https?:\/\//.test(u) ? h('a', { href: u, rel: 'noreferrer noopener', target: '_blank' }, u) : u))) : '—'),
    ));
}

async function artifactView(name, repo, reference) {
  const base = `/api/v1/registries/${enc(name)}/artifacts/${encPath(repo)}/-/${enc(reference)}`;
  const a = await api('GET', base);
  const isIndex = a.platforms && a.platforms.length > 0;
  const platforms = isIndex
    ? table(['Platform', 'Digest', 'Vulnerabilities'], a.platforms.map((p) => [
        p.platform || '—',
        h('a', { href: `#/r/${enc(name)}/a/${encPath(repo)}/-/${enc(p.digest)}`, class: 'mono' }, p.digest.slice(0, 19)),
        severityBadge(p.scan),
      ]), 'No platforms.')
    : null;
  const severity = h('fieldset', {}, h('legend', {}, 'Severity'), h('div', { class: 'checks' }, SEVERITIES.map((s) => [
    h('input', { type: 'checkbox', id: `sev-${s}`, value: s }), h('label', { for: `sev-${s}` }, s)])));
  const fixable = h('input', { type: 'checkbox', id: 'fixable' });
  const findings = h('div', {});
  const load = act(async () => {
    const chosen = SEVERITIES.filter((s) => document.getElementById(`sev-${s}`).checked);
    const q = new URLSearchParams({ limit: '100' });
    if (chosen.length) q.set('severity', chosen.join(','));
    if (fixable.checked) q.set('fixable', 'true');
    const page = await api('GET', `${base}/vulnerabilities?${q}`);
    findings.replaceChildren(table(['ID', 'Package', 'Installed', 'Fixed in', 'Severity', 'Score'], page.items.map((f) => [
      h('a', { href: `#/r/${enc(name)}/cve/${enc(f.id)}` }, f.id),
      f.package,
      f.installed,
      f.fixed || '—',
      severityBadge({ status: 'scanned', highest_severity: f.severity }),
      f.score ?? '—',
    ]), a.scan.status === 'scanned' ? 'No findings match.' : `No findings: the scan is ${a.scan.status}${a.scan.reason ? ` (${a.scan.reason})` : ''}.`));
  });
  const sbom = (format) => act(async () => {
    const r = await fetch(`${base}/sbom?format=${format}`, { headers: { 'X-Wharf-Console': '1' } });
    if (!r.ok) {
      const p = await r.json().catch(() => ({}));
      throw new ApiError(r.status, p.detail || `HTTP ${r.status}`);
    }
    const url = URL.createObjectURL(await r.blob());
    const link = h('a', { href: url, download: `${repo.replaceAll('/', '_')}-${a.digest.slice(7, 19)}.${format}.json` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  });
  show(
    h('p', { class: 'crumbs' }, h('a', { href: '#/registries' }, 'Registries'), ' / ', h('a', { href: `#/r/${enc(name)}` }, name), ' / ',
      h('a', { href: `#/r/${enc(name)}/repo/${encPath(repo)}` }, repo), ' / ', reference.slice(0, 19)),
    h('h1', {}, `${repo}@${a.digest.slice(7, 19)}`),
    h('section', { class: 'panel', 'aria-label': 'Artifact' }, h('dl', { class: 'props' },
      h('dt', {}, 'Digest'), h('dd', { class: 'mono' }, a.digest),
      h('dt', {}, 'Type'), h('dd', {}, a.media_type),
      h('dt', {}, 'Scan'), h('dd', {}, severityBadge(a.scan), a.scan.os ? ` ${a.scan.os}` : '', a.scan.packages ? `, ${a.scan.packages} packages` : ''),
      h('dt', {}, 'Scanned'), h('dd', {}, when(a.scan.scanned_at))),
      isIndex ? null : h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'secondary', onclick: sbom('spdx') }, 'Download SBOM (SPDX)'),
        h('button', { type: 'button', class: 'secondary', onclick: sbom('cyclonedx') }, 'Download SBOM (CycloneDX)'))),
    isIndex ? h('h2', {}, 'Platforms') : null,
    platforms,
    h('h2', {}, 'Referrers'),
    table(['Kind', 'Digest', 'Size'], a.referrers.map((x) => [
      x.artifact_type || x.media_type,
      h('a', { href: `#/r/${enc(name)}/a/${encPath(repo)}/-/${enc(x.digest)}`, class: 'mono' }, x.digest.slice(0, 19)),
      bytes(x.size),
    ]), 'No signatures, SBOMs or other referrers.'),
    h('h2', {}, 'Vulnerabilities'),
    h('form', { class: 'inline', onchange: load, onsubmit: (e) => e.preventDefault() }, severity,
      h('div', { class: 'checks' }, fixable, h('label', { for: 'fixable' }, 'Only fixable'))),
    findings,
  );
  await load();
}

// --- Garbage collection ---

const WEEKDAYS = ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'];

function gcReport(run) {
  if (run.status === 'failed') return `failed: ${run.error || 'unknown error'}`;
  const what = `${run.manifests_freed} manifests, ${run.blobs_freed} blobs, ${bytes(run.bytes_freed)}`;
  return `${run.dry_run ? 'would free' : 'freed'} ${what} in ${run.duration_seconds.toFixed(1)} s`;
}

async function gcSection(r, refresh) {
  const base = `/api/v1/registries/${enc(r.name)}/gc`;
  const runs = await api('GET', `${base}/runs?limit=10`);
  const history = table(['Started', 'Cause', 'Status', 'Report'], runs.items.map((run) => [
    when(run.started_at), run.dry_run ? `${run.cause} (dry run)` : run.cause, run.status, run.status === 'running' ? `phase ${run.phase || '…'}` : gcReport(run),
  ]), 'No collection has run.', 'Recent runs');
  if (!can('registry:write')) return h('section', { 'aria-labelledby': 'gc-title' }, h('h2', { id: 'gc-title' }, 'Garbage collection'), history);
  const weekly = r.gc_schedule && r.gc_schedule.weekdays ? r.gc_schedule : null;
  const days = h('fieldset', {}, h('legend', {}, 'Weekdays (UTC)'), h('div', { class: 'checks' }, WEEKDAYS.map((d) => [
    h('input', { type: 'checkbox', id: `gc-${d}`, checked: !!(weekly && weekly.weekdays.includes(d)) }), h('label', { for: `gc-${d}` }, d)])));
  const time = field('gc-time', 'Time (UTC)', h('input', { type: 'time', value: weekly ? weekly.time : '03:00' }));
  const scheduleError = h('p', { class: 'error', role: 'alert', id: 'gc-schedule-error' });
  const schedule = h('form', {
    class: 'inline',
    onsubmit: async (e) => {
      e.preventDefault();
      scheduleError.textContent = '';
      const chosen = WEEKDAYS.filter((d) => document.getElementById(`gc-${d}`).checked);
      const body = { gc_schedule: chosen.length ? { weekdays: chosen, time: time.input.value } : null };
      try {
        await api('PATCH', `/api/v1/registries/${enc(r.name)}`, body);
        await refresh();
        say(chosen.length ? 'Schedule saved' : 'Schedule removed');
      } catch (x) {
        if (!(x instanceof SessionEnded)) scheduleError.textContent = x.message;
      }
    },
  }, days, time.el, h('button', { type: 'submit' }, 'Save schedule'), scheduleError);
  const dry = h('input', { type: 'checkbox', id: 'gc-dry' });
  const report = h('p', { role: 'status', id: 'gc-report' });
  const runNow = h('form', {
    class: 'inline',
    onsubmit: async (e) => {
      e.preventDefault();
      report.textContent = 'Collecting…';
      try {
        let run = await api('POST', base, { dry_run: dry.checked });
        while (run.status === 'running') {
          await new Promise((res) => setTimeout(res, 500));
          run = await api('GET', `${base}/runs/${run.id}`);
          report.textContent = `Collecting… ${run.phase || ''}`;
        }
        report.textContent = `Run ${run.id} ${gcReport(run)}`;
      } catch (x) {
        if (!(x instanceof SessionEnded)) report.textContent = x.message;
      }
    },
  }, h('div', { class: 'checks' }, dry, h('label', { for: 'gc-dry' }, 'Dry run (free nothing, list what would go)')), h('button', { type: 'submit' }, 'Collect now'));
  return panel('gc-title', 'Garbage collection', schedule, runNow, report, history);
}

// --- Upstreams, caches and replication ---

/** Replaces an upstream's secret at once (rotation). */
function rotateSecretForm(base, u, refresh) {
  const id = `rotate-${u.host.replace(/[^a-z0-9]/g, '-')}`;
  const input = h('input', { type: 'password', id, autocomplete: 'new-password' });
  const error = h('p', { class: 'error', role: 'alert', id: `${id}-error` });
  const form = h('form', {
    class: 'inline',
    onsubmit: async (e) => {
      e.preventDefault();
      error.textContent = '';
      try {
        await api('PATCH', `${base}/upstreams/${enc(u.host)}`, { secret: input.value });
        input.value = '';
        await refresh();
        say(`Secret of ${u.host} replaced`);
      } catch (x) {
        if (!(x instanceof SessionEnded)) error.textContent = x.message;
      }
    },
  }, h('div', { class: 'field' }, h('label', { for: id }, `New secret for ${u.host}`), input),
  h('button', { type: 'submit', class: 'secondary' }, 'Replace'), error);
  return h('details', {}, h('summary', {}, 'Replace secret'), form);
}

async function upstreamsSection(name, refresh) {
  const base = `/api/v1/registries/${enc(name)}`;
  const [ups, caches, rules] = await Promise.all([
    api('GET', `${base}/upstreams`),
    api('GET', `${base}/caches`),
    api('GET', `${base}/replications`),
  ]);
  const result = h('p', { role: 'status', id: 'upstream-test' });
  const upRows = ups.items.map((u) => [
    u.url, u.username, u.description || '—', when(u.secret_updated_at),
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', onclick: act(async () => {
        result.textContent = `Testing ${u.host}…`;
        const t = await api('POST', `${base}/upstreams/${enc(u.host)}/test`, {});
        result.textContent = `${u.host}: ${t.cause} — ${t.detail}`;
      }) }, `Test ${u.host}`),
      can('registry:write') ? rotateSecretForm(base, u, refresh) : null,
      can('registry:write') ? h('button', { type: 'button', class: 'danger', onclick: act(async () => {
        if (!window.confirm(`Delete the credentials for ${u.host}?`)) return;
        await api('DELETE', `${base}/upstreams/${enc(u.host)}`);
        await refresh();
        say(`Upstream ${u.host} deleted`);
      }) }, `Delete ${u.host}`) : null),
  ]);
  const remove = (what, path, label) => (can('registry:write')
    ? h('button', { type: 'button', class: 'danger', onclick: act(async () => {
        if (!window.confirm(`Delete ${what}?`)) return;
        await api('DELETE', path);
        await refresh();
        say(`${what} deleted`);
      }) }, label)
    : '');
  const cacheRows = caches.items.map((c) => [
    `${c.prefix}/`, c.upstream, c.upstream_prefix || '—', `${c.revalidate_secs} s`,
    remove(`the cache ${c.prefix}/`, `${base}/caches/${enc(c.prefix)}`, `Delete cache ${c.prefix}`),
  ]);
  const ruleRows = rules.items.map((r) => [
    r.name, `${r.repositories}${r.tags ? ` : ${r.tags}` : ''}`, `${r.upstream} ${r.target}`, r.enabled ? 'on' : 'off',
    `${r.status.pending} pending, ${r.status.succeeded} done, ${r.status.failed} failed`, r.status.last_error || '—',
    remove(`the rule ${r.name}`, `${base}/replications/${enc(r.name)}`, `Delete rule ${r.name}`),
  ]);
  let form = null;
  if (can('registry:write')) {
    const url = field('up-url', 'URL', h('input', { type: 'text', placeholder: 'https://registry.example.com', autocomplete: 'off' }));
    const user = field('up-user', 'Username', h('input', { type: 'text', autocomplete: 'off' }));
    const secret = field('up-secret', 'Password or token', h('input', { type: 'password', autocomplete: 'new-password' }), 'Stored sealed; never shown again.');
    form = h('form', {
      class: 'inline',
      onsubmit: async (e) => {
        e.preventDefault();
        for (const f of [url, user, secret]) f.error.textContent = '';
        try {
          await api('POST', `${base}/upstreams`, { url: url.input.value.trim(), username: user.input.value, secret: secret.input.value });
          secret.input.value = '';
          await refresh();
          say('Upstream saved');
        } catch (x) {
          if (x instanceof SessionEnded) return;
          const target = /secret/i.test(x.message) ? secret : /username/i.test(x.message) ? user : url;
          target.error.textContent = x.message;
        }
      },
    }, url.el, user.el, secret.el, h('button', { type: 'submit' }, 'Add upstream'));
  }
  return panel('upstreams-title', 'Upstream registries', table(['URL', 'Username', 'Description', 'Secret set', 'Actions'], upRows, 'No upstream credentials.'),
    result,
    form,
    h('h3', {}, 'Pull-through caches'),
    table(['Prefix', 'Upstream', 'Upstream prefix', 'Revalidate after', 'Actions'], cacheRows, 'No caches.'),
    can('registry:write') && ups.items.length ? cacheForm(base, ups.items, refresh) : null,
    h('h3', {}, 'Replication'),
    table(['Rule', 'Repositories : tags', 'To', 'Enabled', 'Copies', 'Last error', 'Actions'], ruleRows, 'No replication rules.'),
    can('registry:write') && ups.items.length ? ruleForm(base, ups.items, refresh) : null);
}

/** One form's fields, errors under them, and a submit that sends their values to the API. */
function apiForm(id, fields, submitLabel, send) {
  const made = fields.map(([key, label, input, hint]) => ({ key, ...field(`${id}-${key}`, label, input, hint) }));
  return h('form', {
    class: 'inline',
    onsubmit: async (e) => {
      e.preventDefault();
      for (const f of made) f.error.textContent = '';
      const values = Object.fromEntries(made.map((f) => [f.key, f.input.value.trim()]));
      try {
        await send(values);
      } catch (x) {
        if (x instanceof SessionEnded) return;
        // The field the API's message names first (messages start with what they refuse).
        const text = x.message.toLowerCase();
        const at = (f) => Math.min(...[f.key, f.key.replace('_', ' ')].map((k) => text.indexOf(k)).filter((i) => i >= 0), Infinity);
        const target = made.reduce((best, f) => (at(f) < at(best) ? f : best), made[0]);
        target.error.textContent = x.message;
      }
    },
  }, made.map((f) => f.el), h('button', { type: 'submit' }, submitLabel));
}

const upstreamSelect = (ups) => h('select', {}, ups.map((u) => h('option', { value: u.host }, u.host)));

function cacheForm(base, ups, refresh) {
  return apiForm('cache', [
    ['prefix', 'Cache prefix', h('input', { type: 'text', placeholder: 'hub', autocomplete: 'off' })],
    ['upstream', 'From', upstreamSelect(ups)],
    ['upstream_prefix', 'Upstream prefix (optional)', h('input', { type: 'text', placeholder: 'library', autocomplete: 'off' })],
    ['revalidate_secs', 'Revalidate tags after (s)', h('input', { type: 'text', inputmode: 'numeric', value: '300', autocomplete: 'off' })],
  ], 'Add cache', async (v) => {
    await api('POST', `${base}/caches`, { ...v, revalidate_secs: Number(v.revalidate_secs) });
    await refresh();
    say(`${v.prefix}/ now caches ${v.upstream}`);
  });
}

function ruleForm(base, ups, refresh) {
  return apiForm('rule', [
    ['name', 'Rule name', h('input', { type: 'text', autocomplete: 'off' })],
    ['repositories', 'Repositories', h('input', { type: 'text', placeholder: 'team/*', autocomplete: 'off' })],
    ['tags', 'Tags (optional)', h('input', { type: 'text', placeholder: 'v*', autocomplete: 'off' })],
    ['upstream', 'To', upstreamSelect(ups)],
    ['target', 'Target repository', h('input', { type: 'text', value: '{name}', autocomplete: 'off' }), '{name} is the pushed repository.'],
  ], 'Add rule', async (v) => {
    await api('POST', `${base}/replications`, v);
    await refresh();
    say(`Rule ${v.name} added`);
  });
}

// --- Audit log ---

async function auditView() {
  const q = new URLSearchParams(location.hash.split('?')[1] || '');
  const registry = field('audit-registry', 'Registry', h('input', { type: 'text', value: q.get('registry') || '', autocomplete: 'off' }));
  const action = field('audit-action', 'Action contains', h('input', { type: 'text', value: q.get('action') || '', autocomplete: 'off' }));
  const params = new URLSearchParams({ limit: '100' });
  if (q.get('registry')) params.set('registry', q.get('registry'));
  const page = await api('GET', `/api/v1/audit?${params}`);
  const wanted = (q.get('action') || '').toLowerCase();
  const rows = page.items
    .filter((e) => !wanted || e.action.toLowerCase().includes(wanted))
    .map((e) => [when(e.at), e.actor, e.action, e.registry || '—', e.repository || '—', e.detail ? h('code', {}, JSON.stringify(e.detail)) : '—']);
  show(
    h('h1', {}, 'Audit log'),
    h('form', {
      class: 'inline panel',
      role: 'search',
      onsubmit: (e) => {
        e.preventDefault();
        const next = new URLSearchParams();
        if (registry.input.value.trim()) next.set('registry', registry.input.value.trim());
        if (action.input.value.trim()) next.set('action', action.input.value.trim());
        location.hash = `#/audit?${next}`;
      },
    }, registry.el, action.el, h('button', { type: 'submit' }, 'Filter')),
    table(['When', 'Who', 'Action', 'Registry', 'Repository', 'Detail'], rows, 'No entries match.'),
  );
}

function scopeRow(index) {
  const kind = h('select', { id: `scope-${index}-type` }, h('option', { value: 'repository' }, 'repository'), h('option', { value: 'registry' }, 'registry (catalog)'));
  const path = h('input', { type: 'text', id: `scope-${index}-path`, value: '*', autocomplete: 'off' });
  const action = (a) => {
    const box = h('input', { type: 'checkbox', id: `scope-${index}-${a}`, checked: a === 'pull' });
    return [box, h('label', { for: `scope-${index}-${a}` }, a)];
  };
  const actions = h('fieldset', {}, h('legend', {}, 'Actions'), h('div', { class: 'checks' }, action('pull'), action('push'), action('delete')));
  const row = h(
    'div',
    { class: 'scope-row' },
    h('div', { class: 'field' }, h('label', { for: `scope-${index}-type` }, 'Type'), kind),
    h('div', { class: 'field' }, h('label', { for: `scope-${index}-path` }, 'Repositories (* matches any)'), path),
    actions,
  );
  kind.addEventListener('change', () => {
    const repo = kind.value === 'repository';
    path.disabled = !repo;
    actions.hidden = !repo;
  });
  row.read = () => {
    if (kind.value === 'registry') return { type: 'registry' };
    const chosen = ['pull', 'push', 'delete'].filter((a) => row.querySelector(`#scope-${index}-${a}`).checked);
    return { type: 'repository', path: path.value.trim(), actions: chosen };
  };
  return row;
}

/** A scope added to an existing token: a repository pattern and its actions. */
function addScopeForm(base, t, refresh) {
  const id = `add-${t.name}`;
  const path = h('input', { type: 'text', id: `${id}-path`, placeholder: 'team/*', autocomplete: 'off' });
  const actions = ['pull', 'push', 'delete'].map((a) => [
    h('input', { type: 'checkbox', id: `${id}-${a}`, checked: a === 'pull' }),
    h('label', { for: `${id}-${a}` }, a),
  ]);
  const error = h('p', { class: 'error', role: 'alert', id: `${id}-error` });
  const form = h('form', {
    class: 'inline',
    onsubmit: async (e) => {
      e.preventDefault();
      error.textContent = '';
      const chosen = ['pull', 'push', 'delete'].filter((a) => document.getElementById(`${id}-${a}`).checked);
      try {
        await api('POST', `${base}/tokens/${enc(t.name)}/scopes`, { type: 'repository', path: path.value.trim(), actions: chosen });
        await refresh();
        say(`Scope added to ${t.name}`);
      } catch (x) {
        if (!(x instanceof SessionEnded)) error.textContent = x.message;
      }
    },
  },
  h('div', { class: 'field' }, h('label', { for: `${id}-path` }, `New scope for ${t.name}`), path),
  h('div', { class: 'checks' }, actions),
  h('button', { type: 'submit', class: 'secondary' }, 'Add'),
  error);
  return h('details', {}, h('summary', {}, 'Add a scope'), form);
}

function createTokenForm(registry, refresh) {
  const name = field('token-name', 'Token name', h('input', { type: 'text', autocomplete: 'off', required: true }), 'The user name clients log in with: 3–63 of a–z, 0–9, “-”.');
  name.input.addEventListener('input', () => {
    name.error.textContent = registryNameProblem(name.input.value);
  });
  const expiry = field('token-expiry', 'Expires (optional)', h('input', { type: 'date' }), 'At midnight UTC of that day.');
  const rows = h('div', {});
  let count = 0;
  const addRow = () => rows.append(scopeRow(count++));
  addRow();
  const scopesError = h('p', { class: 'error', id: 'token-scopes-error', role: 'alert' });
  const form = h(
    'form',
    {
      onsubmit: async (e) => {
        e.preventDefault();
        for (const el of [name.error, expiry.error, scopesError]) el.textContent = '';
        const problem = registryNameProblem(name.input.value);
        if (problem) {
          name.error.textContent = problem;
          return name.input.focus();
        }
        const scopes = [...rows.children].map((r) => r.read());
        const bad = scopes.find((s) => s.type === 'repository' && (!s.path || !s.actions.length || (s.actions.includes('push') && !s.actions.includes('pull'))));
        if (bad) {
          scopesError.textContent = !bad.path
            ? 'Each repository scope needs a path pattern.'
            : !bad.actions.length
              ? 'Each repository scope needs at least one action.'
              : 'push needs pull: a client that pushes reads what is there first.';
          return;
        }
        const body = { name: name.input.value, scopes };
        if (expiry.input.value) body.expires_at = `${expiry.input.value}T00:00:00Z`;
        try {
          const t = await api('POST', `/api/v1/registries/${enc(registry.name)}/tokens`, body);
          showSecret(t, refresh);
        } catch (x) {
          if (x instanceof SessionEnded) return;
          const target = /expir/i.test(x.message) ? expiry.error : /scope|action|path|pattern/i.test(x.message) ? scopesError : name.error;
          target.textContent = x.message;
        }
      },
    },
    h('div', { class: 'inline' }, name.el, expiry.el),
    h('h3', {}, 'Scopes'),
    rows,
    scopesError,
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', onclick: addRow }, 'Add a scope'),
      h('button', { type: 'submit' }, 'Create token')),
  );
  return panel('new-token', 'New token', form);
}

/** The one time a token's secret is shown: gone from the page once the dialog closes. */
function showSecret(t, then) {
  const dialog = h(
    'dialog',
    { 'aria-labelledby': 'secret-title' },
    h('h2', { id: 'secret-title' }, `Token ${t.name} created`),
    h('p', {}, 'Copy what you need now: the secret is shown only this once.'),
    copyable('Secret', t.secret),
    copyable('docker login', t.docker_login),
    copyable('config.json entry', JSON.stringify(t.docker_config, null, 2)),
    copyable('Kubernetes Secret', t.kubernetes_secret),
    h('button', { type: 'button', onclick: () => dialog.close() }, 'Done'),
  );
  dialog.addEventListener('close', () => {
    dialog.remove();
    then();
  });
  document.body.append(dialog);
  dialog.showModal();
}

function deleteRegistryForm(name) {
  const confirmName = field('delete-confirm', `Type ${name} to confirm`, h('input', { type: 'text', autocomplete: 'off' }), 'Its repositories, tags and tokens go at once; its content when garbage is next collected.');
  const button = h('button', { type: 'submit', class: 'danger', disabled: true }, 'Delete registry');
  confirmName.input.addEventListener('input', () => {
    button.disabled = confirmName.input.value !== name;
  });
  const form = h(
    'form',
    {
      class: 'inline',
      onsubmit: async (e) => {
        e.preventDefault();
        if (confirmName.input.value !== name) return;
        try {
          await api('DELETE', `/api/v1/registries/${enc(name)}`);
          say(`Registry ${name} deleted`);
          location.hash = '#/registries';
        } catch (x) {
          if (!(x instanceof SessionEnded)) confirmName.error.textContent = x.message;
        }
      },
    },
    confirmName.el,
    button,
  );
  return panel('delete-registry', 'Delete this registry', form);
}

// --- One repository ---

async function repositoryView(name, repo) {
  const path = `/api/v1/registries/${enc(name)}/repositories/${encPath(repo)}`;
  const [page, repos] = await Promise.all([
    api('GET', `/api/v1/registries/${enc(name)}/artifacts/${encPath(repo)}?limit=100`),
    api('GET', `/api/v1/registries/${enc(name)}/repositories?limit=100`),
  ]);
  const info = repos.items.find((p) => p.name === repo);
  const controls = h('div', { class: 'actions' },
    info && can('registry:write')
      ? h('button', {
          type: 'button',
          class: 'secondary',
          onclick: act(async () => {
            await api('PATCH', path, { public: !info.public });
            say(info.public ? `${repo} is private again` : `${repo} may be pulled by anyone`);
            await repositoryView(name, repo);
          }),
        }, info.public ? 'Make private' : 'Make public (anonymous pulls)')
      : null,
    can('registry:delete')
      ? h('button', {
          type: 'button',
          class: 'danger',
          onclick: act(async () => {
            if (!window.confirm(`Delete repository ${repo} with all its tags and manifests?`)) return;
            await api('DELETE', path);
            say(`Repository ${repo} deleted`);
            location.hash = `#/r/${enc(name)}`;
          }),
        }, 'Delete repository')
      : null);
  const rows = page.items.map((a) => [
    a.tags.length ? a.tags.join(', ') : h('span', { class: 'muted' }, 'untagged'),
    h('a', { href: `#/r/${enc(name)}/a/${encPath(repo)}/-/${enc(a.digest)}`, title: a.digest, class: 'mono' }, a.digest.slice(0, 19)),
    a.artifact_type || a.media_type.replace('application/vnd.', ''),
    bytes(a.size),
    when(a.pushed_at),
    when(a.pulled_at),
    severityBadge(a.scan),
  ]);
  show(
    h('p', { class: 'crumbs' }, h('a', { href: '#/registries' }, 'Registries'), ' / ', h('a', { href: `#/r/${enc(name)}` }, name), ' / ', repo),
    h('h1', {}, repo),
    h('p', {}, info && info.public ? 'Public: anyone may pull it without credentials.' : 'Private: pulls need a token.'),
    controls,
    table(['Tags', 'Digest', 'Type', 'Size', 'Pushed', 'Pulled', 'Vulnerabilities'], rows, 'No artifacts.'),
  );
}

// --- Routing ---

const routes = [
  [/^#\/registries$/, registriesView],
  [/^#\/audit(?:\?.*)?$/, auditView],
  [/^#\/system$/, systemView],
  [/^#\/r\/([^/]+)$/, registryView],
  [/^#\/r\/([^/]+)\/repo\/(.+)$/, repositoryView],
  [/^#\/r\/([^/]+)\/a\/(.+)\/-\/([^/]+)$/, artifactView],
  [/^#\/r\/([^/]+)\/cve\/([^/]+)$/, cveView],
];

async function route() {
  if (!session) {
    try {
      session = await api('GET', '/console/session');
    } catch {
      return signIn();
    }
  }
  nav.hidden = false;
  who.textContent = `${session.name} (${session.permissions.join(', ')})`;
  const hash = location.hash || '#/registries';
  for (const [pattern, view] of routes) {
    const m = hash.match(pattern);
    if (!m) continue;
    try {
      await view(...m.slice(1).map(decodeURIComponent));
    } catch (x) {
      if (x instanceof SessionEnded) return;
      show(h('h1', {}, 'That did not work'), h('p', { class: 'error', role: 'alert' }, x.message));
    }
    main.focus();
    return;
  }
  location.hash = '#/registries';
}

document.getElementById('sign-out').addEventListener('click', signOut);
window.addEventListener('hashchange', route);
route();
