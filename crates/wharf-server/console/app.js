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
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
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
  main.replaceChildren(h('h1', {}, 'Sign in to wharf'), form);
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
  main.replaceChildren(
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
  return h('section', { class: 'panel', 'aria-labelledby': 'new-registry' }, h('h2', { id: 'new-registry' }, 'New registry'), form);
}

// --- One registry ---

function scopeText(s) {
  if (s.type === 'registry') return 'registry (catalog)';
  return `${s.path} — ${s.actions.join(', ')}`;
}

async function registryView(name) {
  const base = `/api/v1/registries/${enc(name)}`;
  const [r, repos, tokens] = await Promise.all([
    api('GET', base),
    api('GET', `${base}/repositories?limit=100`),
    api('GET', `${base}/tokens?limit=100`),
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
              say('Scanning is on; what was pushed before is being scanned');
              await refresh();
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
    h('ul', { class: 'plain' }, t.scopes.map((s) => h('li', {}, scopeText(s)))),
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
                say(`Token ${t.name} ${t.enabled ? 'disabled' : 'enabled'}`);
                await refresh();
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
                say(`Token ${t.name} deleted`);
                await refresh();
              }),
            },
            `Delete ${t.name}`,
          ),
        )
      : '',
  ]);
  main.replaceChildren(
    h('p', { class: 'crumbs' }, h('a', { href: '#/registries' }, 'Registries'), ' / ', name),
    h('h1', {}, `Registry ${name}`),
    h('section', { class: 'panel', 'aria-label': 'Properties' }, props, scanSwitch),
    h('h2', {}, 'Repositories'),
    table(['Repository', 'Artifacts', 'Tags', 'Storage', 'Latest artifact'], repoRows, 'Nothing pushed yet.'),
    h('h2', {}, 'Tokens'),
    table(['Name', 'Scopes', 'Expires', 'State', 'Actions'], tokenRows, 'No tokens yet.'),
    can('registry:write') ? createTokenForm(r, refresh) : null,
    can('registry:delete') ? deleteRegistryForm(name) : null,
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
  return h('section', { class: 'panel', 'aria-labelledby': 'new-token' }, h('h2', { id: 'new-token' }, 'New token'), form);
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
  return h('section', { class: 'panel', 'aria-labelledby': 'delete-registry' }, h('h2', { id: 'delete-registry' }, 'Delete this registry'), form);
}

// --- One repository ---

async function repositoryView(name, repo) {
  const page = await api('GET', `/api/v1/registries/${enc(name)}/artifacts/${encPath(repo)}?limit=100`);
  const rows = page.items.map((a) => [
    a.tags.length ? a.tags.join(', ') : h('span', { class: 'muted' }, 'untagged'),
    h('code', { title: a.digest }, a.digest.slice(0, 19)),
    a.artifact_type || a.media_type.replace('application/vnd.', ''),
    bytes(a.size),
    when(a.pushed_at),
    when(a.pulled_at),
    severityBadge(a.scan),
  ]);
  main.replaceChildren(
    h('p', { class: 'crumbs' }, h('a', { href: '#/registries' }, 'Registries'), ' / ', h('a', { href: `#/r/${enc(name)}` }, name), ' / ', repo),
    h('h1', {}, repo),
    table(['Tags', 'Digest', 'Type', 'Size', 'Pushed', 'Pulled', 'Vulnerabilities'], rows, 'No artifacts.'),
  );
}

// --- Routing ---

const routes = [
  [/^#\/registries$/, registriesView],
  [/^#\/r\/([^/]+)$/, registryView],
  [/^#\/r\/([^/]+)\/repo\/(.+)$/, repositoryView],
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
      main.replaceChildren(h('h1', {}, 'That did not work'), h('p', { class: 'error', role: 'alert' }, x.message));
    }
    main.focus();
    return;
  }
  location.hash = '#/registries';
}

document.getElementById('sign-out').addEventListener('click', signOut);
window.addEventListener('hashchange', route);
route();
