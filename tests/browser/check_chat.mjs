// The diffusion chat's page in headless Chromium: send a prompt, screenshot it mid-denoising and when done.
//   node check_chat.mjs <chat URL> <output folder>   (CHROMIUM: the browser; CHAT_NODE_MODULES: where
//   playwright-core is installed, default ./node_modules)
// Prints one JSON line: masked/revealed cells at the mid screenshot, masked cells and tokens/s at the end.
import { createRequire } from "node:module";
import path from "node:path";

const modules = process.env.CHAT_NODE_MODULES || path.join(process.cwd(), "node_modules");
const { chromium } = createRequire(path.join(modules, "noop.js"))("playwright-core");
const [url, out] = process.argv.slice(2);
const query = new URLSearchParams({
  steps: "32", max_new_tokens: "64", block_length: "16", delay: "150", prompt: "What is 2 + 3?",
});

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium" });
try {
  const page = await browser.newPage({ viewport: { width: 1000, height: 520 } });
  page.on("console", (message) => console.error(`console: ${message.text()}`));
  page.on("pageerror", (error) => console.error(`page error: ${error}`));
  await page.goto(`${url}/?${query}`);
  const count = (selector) => page.locator(selector).count();
  // mid-denoising: the first block done, the next ones partly masked
  await page.waitForFunction(() => {
    const masked = document.querySelectorAll("#log .cell.m").length;
    return masked > 0 && masked <= 40;
  }, null, { timeout: 60000 });
  const masked_mid = await count("#log .cell.m");
  const revealed_mid = await count("#log .cell.t, #log .cell.e");
  await page.screenshot({ path: path.join(out, "chat-denoising.png") });
  await page.waitForSelector(".msg.assistant[data-done]", { timeout: 60000 });
  const status = await page.locator(".msg.assistant .status").textContent();
  const masked_end = await count("#log .cell.m");
  await page.screenshot({ path: path.join(out, "chat-done.png") });
  const speed = /([\d.]+) tokens\/s/.exec(status);
  console.log(JSON.stringify({ masked_mid, revealed_mid, masked_end, status, tokens_per_second: speed && Number(speed[1]) }));
} catch (error) {
  console.error(await browser.contexts()[0]?.pages()[0]?.content());
  throw error;
} finally {
  await browser.close();
}
