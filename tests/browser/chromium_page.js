// The headless Chromium page both browser scripts drive: Debian's Chromium
// through playwright-core (no downloaded browser), one persistent profile,
// console messages collected for the report.

const { chromium } = require('playwright-core');

// Flags for a sandboxed machine without a GPU or network beyond localhost.
const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Containers often have a tiny /dev/shm.
  '--disable-dev-shm-usage',
];

// Launches the browser for `config` ({userDataDir, chromium?}); returns
// {context, page, log} with the page's default timeout set to `timeout` ms.
async function openPage(config, viewport, timeout) {
  const context = await chromium.launchPersistentContext(config.userDataDir, {
    executablePath: config.chromium || '/usr/bin/chromium',
    headless: true,
    args: FLAGS,
    viewport,
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(timeout);
  const log = [];
  page.on('console', (msg) => log.push(`${msg.type()}: ${msg.text()}`));
  return { context, page, log };
}

module.exports = { openPage };
