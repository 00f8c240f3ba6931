// Render every plugin form the way the plugin-era workbench does, screenshot it, submit it untouched and after
// typical edits, and record what the host's submit handler produced.
//
//   TRANSFORMERLAB_APP_GIT=/path/to/transformerlab-app/.git node check_forms.mjs [--fixtures ../fixtures/host_form]
//
// DynamicPluginForm.tsx is read from that repository at HOST_COMMIT (the last commit with the plugin-era
// training modal; the component is the same as beside EvalModal.tsx before 3609a6a74) and bundled with the RJSF and
// Joy versions its package-lock pins (package.json here). Screenshots and results go to out/.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { chromium } from 'playwright-core';

const HOST_COMMIT = '7b14f5ea5';
const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const OUT = path.join(HERE, 'out');
const SCENARIOS = JSON.parse(fs.readFileSync(path.join(HERE, 'scenarios.json'), 'utf8'));

function hostSource() {
  const gitDir = process.env.TRANSFORMERLAB_APP_GIT;
  if (!gitDir) throw new Error('set TRANSFORMERLAB_APP_GIT to a clone (git dir) of transformerlab/transformerlab-app');
  const file = 'src/renderer/components/Experiment/DynamicPluginForm.tsx';
  return execFileSync('git', ['--git-dir', gitDir, 'show', `${HOST_COMMIT}:${file}`], { encoding: 'utf8' });
}

async function bundle() {
  fs.mkdirSync(path.join(OUT, 'host'), { recursive: true });
  fs.writeFileSync(path.join(OUT, 'host', 'DynamicPluginForm.tsx'), hostSource());
  const stub = path.join(HERE, 'stubs', 'host.js');
  const stubHostModules = {
    name: 'stub-host-modules',
    setup(build) {
      build.onResolve({ filter: /^host\// }, (args) => ({ path: path.join(OUT, args.path) }));
      build.onResolve({ filter: /^renderer\/|^\.\/Widgets\// }, () => ({ path: stub }));
    },
  };
  await esbuild.build({
    entryPoints: [path.join(HERE, 'page.jsx')],
    bundle: true,
    outfile: path.join(OUT, 'page.js'),
    plugins: [stubHostModules],
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'warning',
  });
  fs.writeFileSync(
    path.join(OUT, 'page.html'),
    '<!doctype html><html><body><div id="root"></div><script src="page.js"></script></body></html>',
  );
}

async function act(page, action) {
  const [kind, target, value] = action;
  if (kind === 'click') await page.click(target);
  else if (kind === 'fill') await page.fill(target, value);
  else if (kind === 'select') await page.selectOption(target, value);
  else if (kind === 'type') await page.type(target, value);
  else if (kind === 'press') await page.press(target, value);
  else throw new Error(`unknown action ${kind}`);
}

async function runScenario(browser, plugin, scenario) {
  const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'plugins', plugin, 'index.json'), 'utf8'));
  // drop_ui: render those fields with the workbench's own widgets (its select for a single choice)
  for (const key of scenario.drop_ui || []) delete manifest.parameters_ui[key];
  const indexText = JSON.stringify(manifest);
  const mode = manifest.type === 'evaluator' ? 'eval' : 'train';
  const page = await browser.newPage({ viewport: { width: 800, height: 900 } });
  const errors = [];
  page.on('pageerror', (err) => errors.push(String(err)));
  await page.goto('file://' + path.join(OUT, 'page.html'));
  await page.evaluate(([text, m]) => window.renderHostForm(text, m), [indexText, mode]);
  await page.waitForSelector('.dynamic-plugin-form', { timeout: 10000 }).catch((err) => {
    throw new Error(`${plugin}/${scenario.name}: the form did not render: ${errors.join('; ') || err}`);
  });
  await page.waitForTimeout(300);
  for (const action of scenario.actions) await act(page, action);
  // Leave the last field first, as a person does before reaching for Submit: its blur re-renders the form, which
  // near the page's end scrolls it between the press and the release of a click, and the click is lost.
  await page.evaluate(() => document.activeElement?.blur());
  await page.waitForTimeout(200);
  // Readable pieces of the full page, one per screen height.
  const shot = path.join(OUT, `${plugin}-${scenario.name}`);
  const height = await page.evaluate(() => document.body.scrollHeight);
  for (let top = 0, i = 0; top < height; top += 1100, i += 1) {
    const clip = { x: 0, y: top, width: 800, height: Math.min(1100, height - top) };
    await page.screenshot({ path: `${shot}-${i}.png`, fullPage: true, clip });
  }
  await page.click('#host-submit');
  await page.waitForFunction(() => window.__submitted__ !== undefined);
  const result = await page.evaluate(() => ({
    submitted: window.__submitted__,
    form_data_only: window.__formDataOnly__,
    current_form_data_set: window.currentFormData !== undefined,
  }));
  await page.close();
  if (errors.length) throw new Error(`${plugin}/${scenario.name}: page errors: ${errors.join('; ')}`);
  const { name, ...described } = scenario;
  return { plugin, mode, scenario: name, ...described, host_commit: HOST_COMMIT, ...result, shot };
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
        console.log(`${plugin}/${scenario.name}: ${result.shot}`);
        if (fixtureDir) {
          fs.mkdirSync(fixtureDir, { recursive: true });
          const { shot, ...fixture } = result;
          fs.writeFileSync(path.join(fixtureDir, `${plugin}-${scenario.name}.json`), JSON.stringify(fixture, null, 2) + '\n');
        }
      }
    }
  } finally {
    await browser.close();
  }
  fs.writeFileSync(path.join(OUT, 'results.json'), JSON.stringify(results, null, 2));
}

await main();
