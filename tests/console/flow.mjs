// Drives the wharf console in Debian's headless Chromium (playwright-core), as tests/console.rs
// starts it: sign-in, registry, token (its one-time secret and copy buttons), a push with that
// token (skopeo), the repository and its artifact, deletions, a read-only key, a revoked key,
// and axe-core on every page. Exits non-zero with the reason on the first failure.
//
// Environment: WHARF_URL (http://127.0.0.1:PORT), WHARF_KEY (an owner key), WHARF_READ_KEY and
// WHARF_READ_KEY_ID (a registry:read key and its id), WHARF_IMAGE (an OCI layout tagged v1),
// WHARF_ALPINE (an Alpine image with a vulnerable OpenSSL, its advisories imported),
// WHARF_HOST_SUFFIX (e.g. .wharf.test:PORT), CHROMIUM, and SCREENSHOTS (a directory, optional).

import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const base = env('WHARF_URL');
const ownerKey = env('WHARF_KEY');
const readKey = env('WHARF_READ_KEY');
const readKeyId = env('WHARF_READ_KEY_ID');
const image = env('WHARF_IMAGE');
const alpine = env('WHARF_ALPINE');
const hostSuffix = env('WHARF_HOST_SUFFIX');
const shots = process.env.SCREENSHOTS;
const axeSource = readFileSync(new URL('./node_modules/axe-core/axe.min.js', import.meta.url), 'utf8');

function check(ok, what) {
  if (!ok) throw new Error(what);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox'],
});
const problems = [];
let current = null;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
  const page = await context.newPage();
  current = page;
  page.on('pageerror', (e) => problems.push(`script error: ${e.message}`));
  page.on('console', (m) => {
    // A refused call (401 before sign-in, 4xx shown in the page) is logged by the browser
    // itself; anything else is a fault of the page (a CSP violation, say).
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('dialog', (d) => d.accept());

  const heading = (text) => page.getByRole('heading', { level: 1, name: text }).waitFor();

  /** axe-core on the page as it is: no serious or critical violation. */
  async function accessible(name) {
    await page.evaluate(`${axeSource}\n;0`);
    const found = await page.evaluate(async () => {
      // eslint-disable-next-line no-undef
      const r = await axe.run(document, { resultTypes: ['violations'] });
      return r.violations
        .filter((v) => v.impact === 'serious' || v.impact === 'critical')
        .map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`);
    });
    check(found.length === 0, `accessibility on ${name}: ${found.join('; ')}`);
    // At a phone's width nothing is wider than the screen.
    await page.setViewportSize({ width: 390, height: 844 });
    const [wide, culprit] = await page.evaluate(() => {
      const over = [...document.querySelectorAll('body *')].filter((el) => el.getBoundingClientRect().right > 391 || el.scrollWidth > el.clientWidth + 1).pop();
      return [document.documentElement.scrollWidth, over ? `${over.tagName}.${over.className}: ${over.textContent.slice(0, 60)}` : ''];
    });
    await page.setViewportSize({ width: 1280, height: 900 });
    check(wide <= 390, `${name} is ${wide} px wide at a phone's 390 px (${culprit})`);
    const text = await page.locator('body').innerText();
    const junk = text.match(/null|undefined|\[object |NaN/);
    check(!junk, `${name} shows ${junk && junk[0]}`);
  }

  async function shoot(name) {
    if (!shots) return;
    mkdirSync(shots, { recursive: true });
    for (const [width, height] of [[1280, 900], [390, 844]]) {
      await page.setViewportSize({ width, height });
      await page.screenshot({ path: `${shots}/${name}-${width}.png`, fullPage: true });
    }
    await page.setViewportSize({ width: 1280, height: 900 });
  }

  // Sign-in: a wrong key is refused next to the field; the right one signs in.
  await page.goto(`${base}/console/`);
  await heading('Sign in to wharf');
  await accessible('sign-in');
  await shoot('sign-in');
  await page.getByLabel('Administrator key').fill('wak_not-a-key');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#key-error', { hasText: 'unknown or revoked' }).waitFor();
  await page.getByLabel('Administrator key').fill(ownerKey);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await heading('Registries');
  const stored = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }));
  check(!stored.includes(ownerKey.slice(4)), 'the key is kept in web storage');

  // A registry: the name rules are explained as it is typed; the API's refusal shows there too.
  await page.getByLabel('Name', { exact: true }).fill('Alpha');
  await page.locator('#registry-name-error', { hasText: 'is not allowed' }).waitFor();
  await page.getByLabel('Name', { exact: true }).fill('default');
  await page.getByRole('button', { name: 'Create registry' }).click();
  await page.locator('#registry-name-error', { hasText: 'already exists' }).waitFor();
  await page.getByLabel('Name', { exact: true }).fill('alpha');
  await page.getByRole('button', { name: 'Create registry' }).click();
  await heading('Registry alpha');
  await accessible('registry');

  // A token for CI: push needs pull; the one-time dialog gives the login line to copy.
  await page.getByLabel('Token name').fill('ci-bot');
  await page.locator('#scope-0-path').fill('team/*');
  await page.locator('#scope-0-pull').uncheck();
  await page.locator('#scope-0-push').check();
  await page.getByRole('button', { name: 'Create token' }).click();
  await page.locator('#token-scopes-error', { hasText: 'push needs pull' }).waitFor();
  await page.locator('#scope-0-pull').check();
  await page.getByRole('button', { name: 'Create token' }).click();
  const dialog = page.getByRole('dialog', { name: 'Token ci-bot created' });
  await dialog.waitFor();
  await accessible('token secret dialog');
  await shoot('token-secret');
  await dialog.getByRole('button', { name: 'Copy docker login' }).click();
  const login = await page.evaluate(() => navigator.clipboard.readText());
  check(login === `docker login alpha${hostSuffix} -u ci-bot --password-stdin`, `copied login line: ${login}`);
  await dialog.getByRole('button', { name: 'Copy Secret' }).click();
  const secret = await page.evaluate(() => navigator.clipboard.readText());
  check(secret.length > 20, 'the secret was copied');
  const kube = await dialog.locator('pre').nth(3).textContent();
  check(kube.includes('kubernetes.io/dockerconfigjson'), `Kubernetes Secret: ${kube}`);
  await dialog.getByRole('button', { name: 'Done' }).click();
  await page.waitForFunction(() => !document.querySelector('dialog'));
  check((await page.content()).indexOf(secret) === -1, 'the secret is still on the page');
  // Scopes are added to a token and removed again.
  await page.locator('summary', { hasText: 'Add a scope' }).first().click();
  await page.getByLabel('New scope for ci-bot').fill('tools/*');
  await page.getByRole('button', { name: 'Add', exact: true }).click();
  await page.getByText('tools/* — pull').waitFor();
  await page.getByRole('button', { name: 'Remove scope tools/* — pull from ci-bot' }).click();
  await page.getByText('tools/* — pull').waitFor({ state: 'detached' });

  // Pushed with that token, the image shows up in its repository.
  execFileSync('skopeo', [
    'copy', '--all', '--dest-tls-verify=false', '--dest-creds', `ci-bot:${secret}`,
    `oci:${image}:v1`, `docker://alpha${hostSuffix}/team/app:v1`,
  ], { stdio: ['ignore', 'ignore', 'inherit'] });
  await page.reload();
  await heading('Registry alpha');
  await page.getByRole('link', { name: 'team/app' }).click();
  await heading('team/app');
  await page.getByRole('cell', { name: 'v1', exact: true }).waitFor();
  await accessible('repository');
  await shoot('repository');
  // Made public, it is pulled without credentials; private again, it is not.
  const tags = `http://alpha${hostSuffix}/v2/team/app/tags/list`;
  check((await fetch(tags)).status === 401, 'a private repository answers anonymous pulls');
  await page.getByRole('button', { name: 'Make public (anonymous pulls)' }).click();
  await page.getByText('Public: anyone may pull it').waitFor();
  check((await fetch(tags)).status === 200, 'a public repository refuses anonymous pulls');
  await page.getByRole('button', { name: 'Make private' }).click();
  await page.getByText('Private: pulls need a token.').waitFor();

  // Scanning on, a vulnerable image pushed: its findings, filters, details, the CVE search
  // across the registry, the chart, and its SBOM.
  await page.getByRole('link', { name: 'alpha' }).click();
  await heading('Registry alpha');
  await page.getByRole('button', { name: 'Turn scanning on' }).click();
  await page.getByText('Scanning is on').waitFor();
  execFileSync('skopeo', [
    'copy', '--dest-tls-verify=false', '--dest-creds', `ci-bot:${secret}`,
    `oci:${alpine}:v1`, `docker://alpha${hostSuffix}/team/base:v1`,
  ], { stdio: ['ignore', 'ignore', 'inherit'] });
  const deadline = Date.now() + 60000;
  for (;;) {
    await page.reload();
    await heading('Registry alpha');
    const row = page.getByRole('row').filter({ has: page.getByRole('link', { name: 'team/base' }) });
    const badge = await row.locator('.badge').textContent().catch(() => '');
    if (badge && badge !== 'scan pending') break;
    check(Date.now() < deadline, `team/base was not scanned: ${badge}`);
    await page.waitForTimeout(500);
  }
  await page.getByRole('figure').filter({ hasText: 'Findings by severity' }).waitFor();
  const samples = await page.getByRole('figure').filter({ hasText: 'Storage used' }).locator('tr').count();
  check(samples >= 2, `storage over time has ${samples} samples`);
  await shoot('registry');
  // An SBOM attached to the image (a referrer) is listed with it.
  const attached = await fetch(`${base}/api/v1/registries/alpha/sboms`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${ownerKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ repository: 'team/base', reference: 'v1' }),
  });
  check(attached.status === 201, `attaching an SBOM: ${attached.status} ${await attached.text()}`);
  await page.getByRole('link', { name: 'team/base' }).click();
  await heading('team/base');
  await page.getByRole('row').filter({ has: page.getByRole('cell', { name: 'v1', exact: true }) }).locator('a.mono').click();
  await heading(/^team\/base@/);
  await page.getByRole('link', { name: 'CVE-2023-0286' }).waitFor();
  await page.getByRole('cell', { name: 'application/spdx+json' }).waitFor();
  await page.getByLabel('Only fixable').check();
  await page.getByRole('link', { name: 'CVE-2023-0286' }).waitFor();
  await page.getByLabel('critical').check();
  await page.getByText('No findings match.').waitFor();
  await page.getByLabel('critical').uncheck();
  await accessible('artifact');
  await shoot('artifact');
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', { name: 'Download SBOM (SPDX)' }).click(),
  ]);
  check(download.suggestedFilename().endsWith('.spdx.json'), `SBOM file name: ${download.suggestedFilename()}`);
  const sbom = JSON.parse(readFileSync(await download.path(), 'utf8'));
  check(sbom.spdxVersion === 'SPDX-2.3' && sbom.packages.some((p) => p.name === 'libcrypto3'), 'the SBOM lists libcrypto3');
  await page.getByRole('link', { name: 'CVE-2023-0286' }).first().click();
  await heading('CVE-2023-0286');
  await page.getByRole('link', { name: /^team\/base@/ }).waitFor();
  await accessible('vulnerability');
  await page.getByRole('link', { name: 'alpha' }).click();
  await heading('Registry alpha');
  await page.getByLabel('Find a vulnerability in this registry').fill('CVE-2023-0286');
  await page.getByRole('button', { name: 'Search' }).click();
  await heading('CVE-2023-0286');
  await page.getByRole('link', { name: /^team\/base@/ }).waitFor();

  // Garbage collection on demand (a dry run), with its report; a weekly schedule; maintenance
  // mode on and off; a token disabled and enabled again.
  await page.getByRole('link', { name: 'alpha' }).click();
  await heading('Registry alpha');
  await page.getByLabel('mon', { exact: true }).check();
  await page.getByLabel('Time (UTC)').fill('04:30');
  await page.getByRole('button', { name: 'Save schedule' }).click();
  await page.getByText(/^next \d{4}-\d{2}-\d{2} 04:30/).first().waitFor();
  await page.getByRole('button', { name: 'Start maintenance (read-only)' }).click();
  await page.getByRole('button', { name: 'End maintenance' }).click();
  await page.getByRole('button', { name: 'Start maintenance (read-only)' }).waitFor();
  await page.getByRole('button', { name: 'Disable ci-bot' }).click();
  await page.getByRole('button', { name: 'Enable ci-bot' }).click();
  await page.getByRole('button', { name: 'Disable ci-bot' }).waitFor();

  // Upstream credentials: added, tested (nothing listens there: unreachable), the secret
  // replaced, deleted.
  await page.getByLabel('URL', { exact: true }).fill('http://127.0.0.1:9');
  await page.getByLabel('Username', { exact: true }).fill('robot');
  await page.getByLabel('Password or token').fill('upstream-secret');
  await page.getByRole('button', { name: 'Add upstream' }).click();
  await page.getByRole('button', { name: 'Test 127.0.0.1:9' }).click();
  await page.locator('#upstream-test', { hasText: 'unreachable' }).waitFor();
  await page.locator('summary', { hasText: 'Replace secret' }).click();
  await page.getByLabel('New secret for 127.0.0.1:9').fill('rotated-secret');
  await page.getByRole('button', { name: 'Replace', exact: true }).click();
  await page.getByText('Secret of 127.0.0.1:9 replaced').waitFor();
  check(!(await page.content()).includes('rotated-secret'), 'an upstream secret is on the page');
  // A pull-through cache and a replication rule over it; refused input shows at its field;
  // the upstream cannot go while they use it.
  await page.getByLabel('Cache prefix').fill('hub');
  await page.getByRole('button', { name: 'Add cache' }).click();
  await page.getByRole('cell', { name: 'hub/', exact: true }).waitFor();
  await page.getByLabel('Rule name').fill('releases');
  await page.getByLabel('Repositories', { exact: true }).fill('team//x');
  await page.getByRole('button', { name: 'Add rule' }).click();
  await page.locator('#rule-repositories-error', { hasText: 'repositories' }).waitFor();
  await page.getByLabel('Repositories', { exact: true }).fill('team/*');
  await page.getByRole('button', { name: 'Add rule' }).click();
  await page.getByRole('cell', { name: 'releases', exact: true }).waitFor();
  await page.getByRole('button', { name: 'Delete 127.0.0.1:9' }).click();
  await page.getByText(/is used by the cache hub\//).waitFor();
  await page.getByRole('button', { name: 'Delete cache hub' }).click();
  await page.getByText('No caches.').waitFor();
  await page.getByRole('button', { name: 'Delete rule releases' }).click();
  await page.getByText('No replication rules.').waitFor();
  await page.getByRole('button', { name: 'Delete 127.0.0.1:9' }).click();
  await page.getByText('No upstream credentials.').waitFor();

  // Settings: a bad quota is refused at its field; a quota and a rate limit are saved.
  await page.getByLabel('Storage quota (GiB, empty: none)').fill('-1');
  await page.getByRole('button', { name: 'Save settings' }).click();
  await page.locator('#set-quota-error', { hasText: 'positive number' }).waitFor();
  await page.getByLabel('Storage quota (GiB, empty: none)').fill('10');
  await page.getByLabel(/^Requests per second per token/).fill('100');
  await page.getByRole('button', { name: 'Save settings' }).click();
  await page.getByText('of 10.0 GiB').waitFor();
  await page.getByText('100 requests/s per token').waitFor();

  // The instance: its set-up, vulnerability data, a collection, administrator keys.
  await page.getByRole('link', { name: 'System' }).click();
  await heading('System');
  await page.getByRole('cell', { name: 'alpine-secdb' }).first().waitFor();
  await page.getByRole('button', { name: 'Collect now' }).click();
  await page.locator('#instance-gc-report', { hasText: 'freed' }).waitFor();
  await page.getByLabel('Key name').fill('ops-laptop');
  await page.getByRole('button', { name: 'Create key' }).click();
  const keyDialog = page.getByRole('dialog', { name: 'Key ops-laptop created' });
  await keyDialog.waitFor();
  await keyDialog.getByRole('button', { name: 'Done' }).click();
  await page.getByRole('button', { name: 'Revoke ops-laptop' }).click();
  await page.getByRole('cell', { name: /^revoked/ }).waitFor();
  await accessible('system');
  await shoot('system');
  await page.getByRole('link', { name: 'Registries' }).first().click();
  await page.getByRole('link', { name: 'alpha' }).click();
  await heading('Registry alpha');
  await page.getByLabel('Dry run (free nothing, list what would go)').check();
  await page.getByRole('button', { name: 'Collect now' }).click();
  await page.locator('#gc-report', { hasText: 'would free' }).waitFor();
  await page.getByRole('link', { name: 'Audit log' }).click();
  await heading('Audit log');
  await page.getByRole('cell', { name: 'registry.create' }).first().waitFor();
  await page.getByLabel('Action contains').fill('token');
  await page.getByRole('button', { name: 'Filter' }).click();
  // The filtered page replaces the other: other actions go, token ones stay.
  await page.getByRole('cell', { name: 'registry.create' }).first().waitFor({ state: 'detached' });
  await page.getByRole('cell', { name: 'token.create' }).first().waitFor();
  await accessible('audit log');
  await shoot('audit');

  // A repository is deleted; then the token, then the registry, its name typed to confirm.
  await page.getByRole('link', { name: 'Registries' }).first().click();
  await page.getByRole('link', { name: 'alpha' }).click();
  await heading('Registry alpha');
  await page.getByRole('link', { name: 'team/app' }).click();
  await heading('team/app');
  await page.getByRole('button', { name: 'Delete repository' }).click();
  await heading('Registry alpha');
  await page.getByRole('link', { name: 'team/base' }).waitFor();
  check((await page.getByRole('link', { name: 'team/app' }).count()) === 0, 'team/app is still listed');
  await page.getByRole('button', { name: 'Delete ci-bot' }).click();
  await page.getByText('No tokens yet.').waitFor();
  const remove = page.getByRole('button', { name: 'Delete registry' });
  check(await remove.isDisabled(), 'delete is enabled before the name is typed');
  await page.getByLabel('Type alpha to confirm').fill('alpha');
  await remove.click();
  await heading('Registries');
  check((await page.getByRole('link', { name: 'alpha' }).count()) === 0, 'alpha is still listed');
  await shoot('registries');
  await accessible('registries');

  // A read-only key sees no create or delete; revoked, it is sent back to sign-in.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await heading('Sign in to wharf');
  await page.getByLabel('Administrator key').fill(readKey);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await heading('Registries');
  check((await page.getByRole('button', { name: 'Create registry' }).count()) === 0, 'a read key may create');
  await page.getByRole('link', { name: 'default' }).click();
  await heading('Registry default');
  check((await page.getByRole('button', { name: /Delete|Create token/ }).count()) === 0, 'a read key sees delete or create buttons');
  const revoked = await fetch(`${base}/api/v1/admin-keys/${readKeyId}`, {
    method: 'DELETE',
    headers: { Authorization: `Bearer ${ownerKey}` },
  });
  check(revoked.status === 204, `revoking the read key: ${revoked.status}`);
  await page.getByRole('link', { name: 'Registries' }).first().click();
  await heading('Sign in to wharf');
  await page.locator('#key-error', { hasText: 'session ended' }).waitFor();

  // The session lives in a cookie scripts cannot read, sent to this site only.
  const cookies = await context.cookies(base);
  const session = cookies.find((c) => c.name === 'wharf_console');
  check(session && session.httpOnly && session.sameSite === 'Strict', `session cookie: ${JSON.stringify(session)}`);
  check(problems.length === 0, problems.join('\n'));
  console.log('console flows: ok');
} catch (e) {
  // What the page showed when the flow stopped says why.
  const shown = current ? await current.locator('body').innerText().catch(() => '') : '';
  console.error(`page at failure:\n${shown}\n`);
  throw e;
} finally {
  await browser.close();
}
