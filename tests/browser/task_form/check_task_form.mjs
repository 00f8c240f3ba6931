// Render each plugin's task.yaml parameters with the Queue Task modal's own parameter section, screenshot it,
// submit it untouched and after typical edits, and record what the modal submitted.
//
//   TRANSFORMERLAB_APP_GIT=/path/to/transformerlab-app/.git node check_task_form.mjs [--fixtures ../../fixtures/task_form]
//
// ParameterOverridesSection.tsx, ParameterInput.tsx and types.ts are read from that repository at APP_COMMIT (or
// TRANSFORMERLAB_APP_COMMIT), and parseParameter/validateParameter out of QueueTaskModal/index.tsx, and bundled
// with the Joy, React and lucide versions the app's package-lock pins (package.json here). task.yaml is read with
// js-yaml; the recordings keep the declarations the page got, which the Python test compares with PyYAML's reading.
// Screenshots and results go to out/.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import yaml from 'js-yaml';
import { chromium } from 'playwright-core';

const APP_COMMIT = process.env.TRANSFORMERLAB_APP_COMMIT || 'db4ce30840db7ccbf52d637b15769d454d22cf15';
const MODAL = 'src/renderer/components/Experiment/Tasks/QueueTaskModal';
const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../../..');
const OUT = path.join(HERE, 'out');
const SCENARIOS = JSON.parse(fs.readFileSync(path.join(HERE, 'scenarios.json'), 'utf8'));

function appFile(file) {
  const gitDir = process.env.TRANSFORMERLAB_APP_GIT;
  if (!gitDir) throw new Error('set TRANSFORMERLAB_APP_GIT to a clone (git dir) of transformerlab/transformerlab-app');
  return execFileSync('git', ['--git-dir', gitDir, 'show', `${APP_COMMIT}:${file}`], { encoding: 'utf8' });
}

function modalRules() {
  // the modal's own reading of a declaration and its bounds check, exported for the page
  const index = appFile(`${MODAL}/index.tsx`);
  const start = index.indexOf('function parseParameter(');
  const end = index.indexOf('export default function QueueTaskModal');
  if (start < 0 || end < start) throw new Error('QueueTaskModal/index.tsx: parseParameter/validateParameter not found');
  return (
    "import type { ParameterSchema, ProcessedParameter } from './types';\n" +
    index.slice(start, end) +
    '\nexport { parseParameter, validateParameter };\n'
  );
}

async function bundle() {
  const app = path.join(OUT, 'app');
  fs.mkdirSync(app, { recursive: true });
  for (const name of ['ParameterOverridesSection.tsx', 'ParameterInput.tsx', 'types.ts']) {
    fs.writeFileSync(path.join(app, name), appFile(`${MODAL}/${name}`));
  }
  fs.writeFileSync(path.join(app, 'modalRules.ts'), modalRules());
  const editor = path.join(HERE, 'stubs', 'editor.jsx');
  const stubAppModules = {
    name: 'stub-app-modules',
    setup(build) {
      build.onResolve({ filter: /^app\// }, (args) => ({ path: path.join(OUT, args.path) }));
      build.onResolve({ filter: /^renderer\// }, () => ({ path: editor }));
    },
  };
  await esbuild.build({
    entryPoints: [path.join(HERE, 'page.jsx')],
    bundle: true,
    outfile: path.join(OUT, 'page.js'),
    plugins: [stubAppModules],
    nodePaths: [path.join(HERE, 'node_modules')],
    jsx: 'automatic',
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'warning',
  });
  fs.writeFileSync(
    path.join(OUT, 'page.html'),
    '<!doctype html><html><body><div id="root"></div><script src="page.js"></script></body></html>',
  );
}

function control(page, declared, key) {
  const title = declared[key]?.title;
  if (!title) throw new Error(`no parameter ${key} with a title`);
  return page.locator('.MuiFormControl-root').filter({ has: page.getByText(`${title}:`, { exact: true }) });
}

async function act(page, declared, [kind, key, value]) {
  const field = control(page, declared, key);
  if (kind === 'fill') await field.locator('input:not([type=checkbox])').first().fill(value);
  else if (kind === 'switch' || kind === 'custom') await field.locator('input[type=checkbox]').click();
  else if (kind === 'radio') await field.locator(`input[type=radio][value="${value}"]`).click();
  else if (kind === 'choose') {
    // a Joy select (the model/dataset picker or an enum's select): open its list box, click the option
    await field.locator('button').first().click();
    await page.getByRole('option', { name: value, exact: true }).click();
  } else throw new Error(`unknown action ${kind}`);
}

async function runScenario(browser, plugin, scenario) {
  const declared = yaml.load(fs.readFileSync(path.join(ROOT, 'plugins', plugin, 'task.yaml'), 'utf8')).parameters;
  const titles = Object.values(declared).map((entry) => entry.title);
  if (new Set(titles).size !== titles.length) throw new Error(`${plugin}: two parameters share a title`);
  const page = await browser.newPage({ viewport: { width: 900, height: 1000 } });
  const errors = [];
  page.on('pageerror', (err) => errors.push(String(err)));
  page.on('dialog', (dialog) => dialog.dismiss());
  await page.goto('file://' + path.join(OUT, 'page.html'));
  await page.evaluate((text) => window.renderTaskForm(text), JSON.stringify(declared));
  await page.waitForSelector('#queue-submit', { timeout: 10000 });
  await page.waitForTimeout(300);
  for (const action of scenario.actions) await act(page, declared, action);
  await page.evaluate(() => document.activeElement?.blur());
  await page.waitForTimeout(200);
  const shot = path.join(OUT, `${plugin}-${scenario.name}`);
  const height = await page.evaluate(() => document.body.scrollHeight);
  for (let top = 0, i = 0; top < height; top += 1200, i += 1) {
    const clip = { x: 0, y: top, width: 900, height: Math.min(1200, height - top) };
    await page.screenshot({ path: `${shot}-${i}.png`, fullPage: true, clip });
  }
  await page.click('#queue-submit');
  await page.waitForFunction(() => window.__submitted__ !== undefined);
  const result = await page.evaluate(() => ({ ...window.__submitted__, json_editor_shown: window.__jsonEditorShown__ }));
  await page.close();
  if (errors.length) throw new Error(`${plugin}/${scenario.name}: page errors: ${errors.join('; ')}`);
  const { name, ...described } = scenario;
  return { plugin, scenario: name, ...described, app_commit: APP_COMMIT, ...result, shot };
}

async function main() {
  const fixturesAt = process.argv.indexOf('--fixtures');
  const fixtureDir = fixturesAt > 0 ? path.resolve(process.argv[fixturesAt + 1]) : null;
  await bundle();
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  const results = [];
  try {
    for (const [plugin, scenarios] of Object.entries(SCENARIOS)) {
      for (const scenario of scenarios) {
        const result = await runScenario(browser, plugin, scenario);
        results.push(result);
        console.log(`${plugin}/${scenario.name}: ${result.shot}${result.refused ? ` (refused: ${result.refused})` : ''}`);
        if (fixtureDir) {
          fs.mkdirSync(fixtureDir, { recursive: true });
          const { shot, ...fixture } = result;
          fs.writeFileSync(path.join(fixtureDir, `${plugin}-${scenario.name}.json`), JSON.stringify(fixture, null, 1) + '\n');
        }
      }
    }
  } finally {
    await browser.close();
  }
  fs.writeFileSync(path.join(OUT, 'results.json'), JSON.stringify(results, null, 2));
}

await main();
