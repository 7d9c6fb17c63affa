// Browser test of the dashboard (issue 15), run by tests/integration/dashboard_test.cpp on a
// 3-node local cluster, or by hand:
//   TERN_CLUSTER_NAME=x node tests/browser/dashboard_test.mjs
// with, in the environment:
//   TERN_CLUSTER   path of deploy/tern-cluster          TERN_DASHBOARD_RO  URL of node1's TCP API
//   TERN_DASHBOARD_RW  URL of the same page with an admin token (actions as root)
//   TERN_SCREENSHOTS   directory for the screenshots     CHROMIUM  (default /usr/bin/chromium)
// It prints one line per step and exits 1 with the reason on the first failure.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Browser } from './cdp.mjs';

const chromium = process.env.CHROMIUM || '/usr/bin/chromium';
const cluster = process.env.TERN_CLUSTER;
const ro = process.env.TERN_DASHBOARD_RO;
const rw = process.env.TERN_DASHBOARD_RW;
const shots = process.env.TERN_SCREENSHOTS || 'screenshots';

function fail(message) {
  console.error('FAIL: ' + message);
  process.exit(1);
}
if (!existsSync(chromium)) {
  fail(`no browser at ${chromium}: install Debian's chromium (deploy/install-deps does) or set CHROMIUM`);
}
if (!cluster || !ro || !rw) fail('set TERN_CLUSTER, TERN_DASHBOARD_RO and TERN_DASHBOARD_RW');
// The page's own address, without the token after '#'.
const base = ro.split('#')[0];
mkdirSync(shots, { recursive: true });

const tern = (node, ...args) =>
  execFileSync(cluster, ['exec', node, 'tern', ...args], { encoding: 'utf8', timeout: 60000 }).trim();
const step = (text) => console.log('step: ' + text);
const jobNode = (id) => JSON.parse(tern('node1', 'status', id, '-o', 'json')).node;
const q = JSON.stringify;

const browser = await Browser.launch(chromium);
let job;
try {
  job = tern('node1', 'submit', '-q', '--node', 'node1', '--name', 'dash-sleeper', '--', 'sleep', '600');
  step(`submitted ${job} on node1`);

  const page = await browser.newPage();
  await page.goto(ro);
  await page.waitFor(`document.querySelectorAll('#nodes .node').length === 3`, 'three node cards');
  await page.waitFor(`document.body.dataset.connected === 'yes'`, 'the event stream to connect');
  await page.waitFor(`!!document.querySelector('[data-node="node1"] .job[data-job=${q(job)}]')`,
    `${job} on node1's card`);
  await page.waitFor(`!!document.querySelector('[data-node="node1"] .chart .uplot')`, 'a CPU/memory chart');
  await page.screenshot(join(shots, '1-overview.png'));
  step('the page shows 3 nodes, charts, and the job on node1');

  tern('node1', 'migrate', job, 'node2');
  step(`tern migrate ${job} node2 returned`);
  await page.waitFor(`!!document.querySelector('[data-node="node2"] .job[data-job=${q(job)}]') &&
    !document.querySelector('[data-node="node1"] .job[data-job=${q(job)}]')`, `${job} on node2's card, gone from node1's`);
  const row = await page.waitFor(`(() => { const r = document.querySelector('#migrations tr.moved[data-job=${q(job)}]');
    return r && r.textContent; })()`, 'the migration in the migrations table');
  if (!/node1 → node2/.test(row) || !/ms/.test(row) || !/B/.test(row)) fail(`migration row lacks move/freeze/bytes: ${row}`);
  await page.waitFor(`[...document.querySelectorAll('#timeline li[data-type="migration"]')]
    .some((li) => li.textContent.includes(${q(job)}) && li.textContent.includes('moved'))`, 'the move in the timeline');
  await page.screenshot(join(shots, '2-after-migration.png'));
  step('the page shows the job on node2 and the migration in the table and the timeline');

  // An action over the read-only TCP API is refused with the API's reason, and changes nothing.
  await page.goto(ro);
  await page.goto(base + `#/job/${encodeURIComponent(job)}`);
  await page.waitFor(`document.querySelector('#job-target') && document.querySelector('#job-target').options.length >= 1 &&
    [...document.querySelector('#job-target').options].some((o) => o.value === 'node3')`, 'the job page with node3 to move to');
  await page.eval(`document.querySelector('#job-target').value = 'node3'; document.querySelector('#job-migrate').click(); true`);
  const refusal = await page.waitFor(`(() => { const n = document.querySelector('#notice');
    return !n.hidden && n.textContent.includes('refused') && n.textContent; })()`, 'the refusal of an action without rights');
  step('read-only page: ' + refusal.replace(/\s+/g, ' '));
  if (jobNode(job) !== 'node2') fail('a refused action moved the job');

  // The job page shows where the job ran and its move.
  await page.waitFor(`[...document.querySelectorAll('#job-path li')].map((l) => l.textContent).join(',') === 'node1,node2'`,
    'where it ran: node1 → node2');
  await page.waitFor(`document.querySelectorAll('#job-migrations tbody tr.moved').length >= 1`, 'the move on the job page');
  await page.screenshot(join(shots, '3-job-page.png'));
  step('the job page shows node1 → node2 and the move');
  // With an admin token the same action moves the job.
  await page.goto(rw);
  const adminToken = decodeURIComponent(rw.split('#token=')[1]);
  await page.waitFor(`localStorage.getItem('tern-token') === ${q(adminToken)} &&
    document.querySelectorAll('#nodes .node').length === 3`, 'the page with an admin token');
  await page.goto(base + `#/job/${encodeURIComponent(job)}`);
  await page.waitFor(`document.querySelector('#job-target') &&
    [...document.querySelector('#job-target').options].some((o) => o.value === 'node3')`, 'the job page, with rights');
  await page.eval(`document.querySelector('#notice').hidden = true;
    document.querySelector('#job-target').value = 'node3'; document.querySelector('#job-migrate').click(); true`);
  const answer = await page.waitFor(`(() => { const n = document.querySelector('#notice');
    return !n.hidden && /done|refused/.test(n.textContent) && n.textContent; })()`, 'the answer to the page\'s migrate', 90000);
  if (!/done/.test(answer)) fail('the page\'s migrate with an admin token: ' + answer);
  await page.goto(base);
  await page.waitFor(`!!document.querySelector('[data-node="node3"] .job[data-job=${q(job)}]')`,
    `${job} on node3's card after the page's migrate`, 90000);
  if (jobNode(job) !== 'node3') fail('the page\'s migrate did not move the job to node3');
  step('admin page: migrate to node3 from the page moved the job');
  await page.goto(ro);

  // It reconnects after its agent restarts, and shows what happened meanwhile.
  execFileSync(cluster, ['restart-agent', 'node1'], { encoding: 'utf8', timeout: 90000 });
  const other = tern('node2', 'submit', '-q', '--node', 'node2', '--name', 'after-restart', '--', 'sleep', '600');
  await page.waitFor(`document.body.dataset.connected === 'yes' &&
    [...document.querySelectorAll('#timeline li[data-type="job"]')].some((li) => li.textContent.includes(${q(other)}))`,
    'the page to reconnect and show a job submitted after the restart', 40000);
  step(`after node1's agent restarted the page reconnected and shows ${other}`);
  tern('node2', 'cancel', other);

  await page.viewport(390, 844, true);
  await page.goto(ro);
  await page.waitFor(`document.querySelectorAll('#nodes .node').length === 3`, 'node cards on a phone');
  const overflow = await page.eval(`document.documentElement.scrollWidth - window.innerWidth`);
  if (overflow > 4) fail(`on a 390 px phone the page is ${overflow} px wider than the screen`);
  await page.screenshot(join(shots, '4-phone.png'));
  step('on a 390 px phone screen the cards stack and nothing is wider than the screen');

  const errors = page.log.filter((m) => m.method === 'Runtime.exceptionThrown');
  if (errors.length) fail('the page threw: ' + JSON.stringify(errors[0].params.exceptionDetails).slice(0, 500));
  console.log(`PASS (screenshots in ${shots})`);
} catch (error) {
  console.error('FAIL: ' + error.message);
  process.exitCode = 1;
} finally {
  if (job) { try { tern('node1', 'cancel', job); } catch (_) { /* ended already */ } }
  await browser.close();
}
