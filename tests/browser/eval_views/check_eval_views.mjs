// Render the app's evaluation result views with what its API returns for our evaluator's jobs, and screenshot them.
//
//   TRANSFORMERLAB_APP_GIT=/path/to/transformerlab-app/.git node check_eval_views.mjs views.json
//
// views.json is what tests/integration/test_lab_eval_views.py records (DLM_EVAL_VIEWS_RECORD=...): per job, its
// job_data.eval_results and score and the app's get_eval_results answer for each file. ViewEvalResultsModal.tsx,
// CompareEvalResultsModal.tsx and Chart.tsx are read from that repository at APP_COMMIT (default HEAD) and bundled
// with the versions its package-lock pins (package.json here); the API modules are stubbed (stubs/api.js).
// Screenshots go to out/.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const OUT = path.join(HERE, 'out');
const TASKS = 'src/renderer/components/Experiment/Tasks';
const FILES = ['ViewEvalResultsModal.tsx', 'CompareEvalResultsModal.tsx', 'Chart.tsx'];
const EXPERIMENT = 'exp';

function appSources() {
  const gitDir = process.env.TRANSFORMERLAB_APP_GIT;
  if (!gitDir) throw new Error('set TRANSFORMERLAB_APP_GIT to a clone (git dir) of transformerlab/transformerlab-app');
  const commit = process.env.APP_COMMIT || 'HEAD';
  fs.mkdirSync(path.join(OUT, 'app'), { recursive: true });
  for (const file of FILES) {
    const text = execFileSync('git', ['--git-dir', gitDir, 'show', `${commit}:${TASKS}/${file}`], { encoding: 'utf8' });
    fs.writeFileSync(path.join(OUT, 'app', file), text);
  }
}

async function bundle() {
  appSources();
  const stub = path.join(HERE, 'stubs', 'api.js');
  await esbuild.build({
    entryPoints: [path.join(HERE, 'page.jsx')],
    bundle: true,
    outfile: path.join(OUT, 'page.js'),
    plugins: [
      {
        name: 'app-modules',
        setup(build) {
          build.onResolve({ filter: /^app\// }, (args) => ({ path: path.join(OUT, args.path) }));
          build.onResolve({ filter: /^renderer\// }, () => ({ path: stub }));
        },
      },
    ],
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'warning',
  });
  fs.writeFileSync(
    path.join(OUT, 'page.html'),
    '<!doctype html><html><body><div id="root"></div><script src="page.js"></script></body></html>',
  );
}

// URL -> answer, as the stubbed Endpoints spell the app's routes
function apiAnswers(views) {
  const api = {};
  for (const [jobId, view] of Object.entries(views)) {
    api[`http://api/experiment/${EXPERIMENT}/jobs/${jobId}`] = {
      id: jobId,
      job_data: { eval_results: view.eval_results, score: view.score },
    };
    view.reports.forEach((report, i) => {
      api[`http://api/experiment/${EXPERIMENT}/jobs/${jobId}/get_eval_results?task=view&file_index=${i}`] = report;
    });
  }
  return api;
}

async function open(browser, api, render, arg) {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const errors = [];
  page.on('pageerror', (err) => errors.push(String(err)));
  await page.goto('file://' + path.join(OUT, 'page.html'));
  await page.evaluate(([answers, experiment]) => {
    window.__API__ = answers;
    window.__EXPERIMENT__ = experiment;
  }, [api, EXPERIMENT]);
  await page.evaluate(([fn, a]) => window[fn](a), [render, arg]);
  await page.waitForTimeout(800);
  if (errors.length) throw new Error(`${render}: ${errors.join('; ')}`);
  return page;
}

async function main() {
  const views = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
  const jobIds = Object.keys(views);
  await bundle();
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium' });
  const api = apiAnswers(views);
  const shots = [];
  const shot = async (page, name) => {
    await page.screenshot({ path: path.join(OUT, `${name}.png`) });
    shots.push(name);
  };
  const view = await open(browser, api, 'renderView', jobIds[0]);
  await view.getByText('Metric name').first().waitFor({ timeout: 10000 });
  await shot(view, 'view_table');
  const table = await view.$$eval('table tbody tr', (rows) => rows.map((r) => [...r.cells].map((c) => c.innerText)));
  await view.getByRole('button', { name: 'Chart' }).click();
  await view.waitForTimeout(800);
  await shot(view, 'view_chart');
  // the file picker: each model's table, then their comparison
  await view.getByRole('button', { name: 'Table' }).click();
  await view.getByRole('combobox').first().click();
  await view.getByRole('option').last().click();
  await view.waitForTimeout(800);
  await shot(view, 'view_comparison');
  await view.getByRole('button', { name: 'Chart' }).click();
  await view.waitForTimeout(800);
  await shot(view, 'view_comparison_chart');
  const compare = await open(browser, api, 'renderCompare', jobIds);
  await compare.waitForTimeout(800);
  await shot(compare, 'compare_jobs');
  const compareText = await compare.innerText('body');
  await browser.close();
  fs.writeFileSync(path.join(OUT, 'result.json'), JSON.stringify({ shots, table, compareText }, null, 1));
  console.log(JSON.stringify({ shots, rows: table.length, firstRow: table[0] }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
