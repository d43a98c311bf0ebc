// Opens a notebook bound to a paused stepkernel session in JupyterLab (Debian's
// headless Chromium), opens the Debugger sidebar and reads its Call Stack and
// Variables, runs the notebook's cell, then presses Continue. Prints what it
// saw as JSON. Used by tests/test_browser.py.
//
// usage: node lab_debugger.js CONFIG_JSON
//   {"url": ".../lab/tree/NB.ipynb?token=T", "expectCell": "text", "variable": "basket",
//    "screenshots": ["paused.png", "continued.png"], "userDataDir": "DIR",
//    "chromium": "/usr/bin/chromium", "timeoutMs": 60000}

const { chromium } = require('playwright-core');

const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

async function frames(page) {
  return page.locator('.jp-DebuggerCallstackFrame').evaluateAll((items) =>
    items.map((li) => ({
      name: li.querySelector('.jp-DebuggerCallstackFrame-name')?.textContent || '',
      location: li.querySelector('.jp-DebuggerCallstackFrame-location')?.textContent || '',
      path: li.querySelector('.jp-DebuggerCallstackFrame-location')?.getAttribute('title') || '',
    })));
}

async function variables(page) {
  return page.locator('.jp-DebuggerVariables-body .jp-DebuggerVariables-name').evaluateAll((names) =>
    names.map((n) => ({
      name: n.textContent || '',
      detail: n.parentElement?.querySelector('.jp-DebuggerVariables-detail')?.textContent || '',
    })));
}

async function main() {
  const config = JSON.parse(process.argv[2]);
  const timeout = config.timeoutMs || 60000;
  const context = await chromium.launchPersistentContext(config.userDataDir, {
    executablePath: config.chromium || '/usr/bin/chromium',
    headless: true,
    args: FLAGS,
    viewport: { width: 1400, height: 900 },
  });
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(timeout);
  const log = [];
  page.on('console', (msg) => log.push(`${msg.type()}: ${msg.text()}`));
  let result = { ok: false };
  const [pausedShot, continuedShot] = config.screenshots;
  let step = 'open the notebook';
  try {
    await page.goto(config.url, { waitUntil: 'domcontentloaded' });
    const cell = page.locator('.jp-NotebookPanel .jp-CodeCell').first();
    await cell.waitFor();
    await page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]').first()
      .waitFor().catch(() => {});

    step = 'open the Debugger sidebar';
    await page.locator('li.lm-TabBar-tab[data-id="jp-debugger-sidebar"]').click();
    const bug = page.locator('.jp-NotebookPanel .jp-DebuggerBugButton').first();
    await bug.waitFor({ state: 'attached' });
    // A paused kernel says so in debugInfo: JupyterLab starts its debugger by itself.
    const autoStarted = await page.locator('.jp-NotebookPanel .jp-DebuggerBugButton[aria-pressed="true"]')
      .first().waitFor({ state: 'attached', timeout: 20000 }).then(() => true, () => false);
    if (!autoStarted) {
      await bug.click();
    }

    step = 'read the Call Stack';
    await page.locator('.jp-DebuggerCallstackFrame').first().waitFor();
    const stack = await frames(page);

    step = 'read the Variables';
    await page.locator('.jp-DebuggerVariables-body .jp-DebuggerVariables-name', { hasText: config.variable })
      .first().waitFor();
    const vars = await variables(page);
    // Expand the list: its items come from the worker.
    await page.locator('.jp-DebuggerVariables-body .jp-DebuggerVariables-name', { hasText: config.variable })
      .first().click();
    await page.locator('.jp-DebuggerVariables-body .jp-DebuggerVariables-detail', { hasText: config.child })
      .first().waitFor();
    const expanded = await variables(page);
    await page.screenshot({ path: pausedShot });

    step = 'run the cell in the paused test';
    // The debugger opened the test file's source (the paused line highlighted) in front of the notebook.
    const sourceOpened = await page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab', { hasText: config.testFile })
      .count() > 0;
    await page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab', { hasText: 'debug.ipynb' }).first().click();
    await cell.locator('.jp-InputArea-editor').click();
    await page.keyboard.press('Shift+Enter');
    await cell.locator('.jp-OutputArea-output').filter({ hasText: config.expectCell }).first().waitFor();
    // The cell changed the test's variables: the panel shows them anew.
    await page.locator('.jp-DebuggerVariables-body .jp-DebuggerVariables-detail', { hasText: config.changed })
      .first().waitFor();
    const varsAfterCell = await variables(page);

    step = 'press Continue';
    const cont = page.locator('[data-command="debugger:continue"]').first();
    await cont.waitFor();
    await cont.click();
    // continued: JupyterLab clears its call stack.
    await page.waitForFunction(() => document.querySelectorAll('.jp-DebuggerCallstackFrame').length === 0);
    await page.screenshot({ path: continuedShot });
    result = { ok: true, autoStarted, sourceOpened, stack, variables: vars, expanded, variablesAfterCell: varsAfterCell };
  } catch (err) {
    result = { ok: false, step, error: String(err) };
    await page.screenshot({ path: pausedShot }).catch(() => {});
  } finally {
    await context.close();
  }
  result.console = log.slice(-40);
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(result.ok ? 0 : 1);
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(err) }) + '\n');
  process.exit(1);
});
