// Opens a notebook bound to a paused stepkernel session in JupyterLab (Debian's
// headless Chromium), opens the Debugger sidebar and reads its Call Stack and
// Variables, runs the notebook's cell, then presses Continue. Prints what it
// saw as JSON. Used by tests/test_browser.py.
//
// usage: node lab_debugger.js CONFIG_JSON
//   {"url": ".../lab/tree/NB.ipynb?token=T", "expectCell": "text", "variable": "basket",
//    "screenshots": ["paused.png", "continued.png"], "userDataDir": "DIR",
//    "chromium": "/usr/bin/chromium", "timeoutMs": 60000}

const { openPage } = require('./chromium_page');


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
  const { context, page, log } = await openPage(config, { width: 1400, height: 900 }, timeout);
  let result = { ok: false };
  const [pausedShot, breakpointShot, continuedShot] = config.screenshots;
  let step = 'open the notebook';
  try {
    await page.goto(config.url, { waitUntil: 'domcontentloaded' });
    const cell = page.locator('.jp-NotebookPanel .jp-CodeCell').first();
    await cell.waitFor();
    await page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]').first()
      .waitFor().catch(() => {});

    step = 'open the Debugger sidebar';
    const bug = page.locator('.jp-NotebookPanel .jp-DebuggerBugButton').first();
    await bug.waitFor({ state: 'attached' });
    // A paused kernel says so in debugInfo: JupyterLab starts its debugger by itself.
    const autoStarted = await page.locator('.jp-NotebookPanel .jp-DebuggerBugButton[aria-pressed="true"]')
      .first().waitFor({ state: 'attached', timeout: 20000 }).then(() => true, () => false);
    if (!autoStarted) {
      await bug.click();
    }
    // The sidebar's tab toggles it: open it only if the debugger did not already.
    const sidebar = page.locator('#jp-debugger-sidebar');
    for (let attempt = 0; attempt < 4 && !(await sidebar.isVisible()); attempt++) {
      await page.locator('li.lm-TabBar-tab[data-id="jp-debugger-sidebar"]').click();
      await sidebar.waitFor({ state: 'visible', timeout: 3000 }).catch(() => {});
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

    step = 'set a breakpoint in the source view';
    // A gutter click on a line of the next test, in the read-only source the debugger opened.
    const spot = await page.evaluate((line) => {
      const editors = [...document.querySelectorAll('.lm-DockPanel .cm-editor')]
        .filter((e) => e.offsetParent !== null && e.querySelector('.cm-breakpoint-gutter'));
      for (const view of editors) {
        const num = [...view.querySelectorAll('.cm-lineNumbers .cm-gutterElement')]
          .find((el) => el.textContent.trim() === String(line));
        const gutter = view.querySelector('.cm-gutter.cm-breakpoint-gutter');
        if (num && gutter) {
          const r = num.getBoundingClientRect();
          const g = gutter.getBoundingClientRect();
          return { x: g.left + g.width / 2, y: r.top + r.height / 2 };
        }
      }
      return null;
    }, config.breakpointLine);
    if (!spot) throw new Error(`no gutter for line ${config.breakpointLine}`);
    await page.mouse.click(spot.x, spot.y);
    await page.locator('.jp-DebuggerBreakpoint').first().waitFor({ state: 'attached' });
    const breakpoints = await page.locator('.jp-DebuggerBreakpoint-line').allTextContents();

    step = 'run the cell in the paused test';
    // The debugger opened the test file's source (the paused line highlighted) in front of the notebook.
    const sourceOpened = await page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab', { hasText: config.testFile })
      .count() > 0;
    const notebookTab = page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab', { hasText: 'debug.ipynb' }).first();
    for (let attempt = 0; ; attempt++) {
      try {
        // The toolbar's Run button, not a key press: the source view may come back in front
        // at any moment (a key would go there; a click on a hidden button fails and is retried).
        await notebookTab.click({ timeout: 5000 });
        await cell.locator('.jp-InputArea-editor').click({ timeout: 5000 });
        await page.locator('.jp-NotebookPanel-toolbar [data-command="notebook:run-cell-and-select-next"]')
          .first().click({ timeout: 5000 });
        break;
      } catch (err) {
        if (attempt >= 5) throw err;
      }
    }
    // (attached: the refreshed debugger view may bring the source back in front meanwhile)
    await cell.locator('.jp-OutputArea-output').filter({ hasText: config.expectCell }).first()
      .waitFor({ state: 'attached' });
    // The cell changed the test's variables: the panel shows them anew.
    await page.locator('.jp-DebuggerVariables-body .jp-DebuggerVariables-detail', { hasText: config.changed })
      .first().waitFor();
    const varsAfterCell = await variables(page);

    step = 'press Continue';
    const cont = page.locator('[data-command="debugger:continue"]').first();
    await cont.waitFor();
    await cont.click();
    // The fixed step passes and the next test stops at the breakpoint.
    step = 'stop at the breakpoint';
    await page.locator('.jp-DebuggerCallstackFrame-name', { hasText: config.nextTest }).first().waitFor();
    const stackAtBreakpoint = await frames(page);
    await page.screenshot({ path: breakpointShot });

    step = 'press Continue again';
    await page.locator('[data-command="debugger:continue"]').first().click();
    // continued: JupyterLab clears its call stack.
    await page.waitForFunction(() => document.querySelectorAll('.jp-DebuggerCallstackFrame').length === 0);
    await page.screenshot({ path: continuedShot });
    result = { ok: true, autoStarted, sourceOpened, stack, variables: vars, expanded, variablesAfterCell: varsAfterCell,
               breakpoints, stackAtBreakpoint };
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
