// Opens a notebook in JupyterLab with Debian's headless Chromium, runs its
// first cell and prints the cell's output as JSON. Used by tests/test_browser.py.
//
// usage: node lab_notebook.js CONFIG_JSON
//   {"url": "http://127.0.0.1:PORT/lab/tree/NB.ipynb?token=T", "expect": "text",
//    "screenshot": "out.png", "userDataDir": "DIR", "chromium": "/usr/bin/chromium", "timeoutMs": 45000}

const { openPage } = require('./chromium_page');

const RUN_BUTTON = '.jp-NotebookPanel-toolbar [data-command="notebook:run-cell-and-select-next"]';


async function main() {
  const config = JSON.parse(process.argv[2]);
  const timeout = config.timeoutMs || 45000;
  const { context, page, log } = await openPage(config, { width: 1280, height: 800 }, timeout);
  let result = { ok: false };
  try {
    await page.goto(config.url, { waitUntil: 'domcontentloaded' });
    // The notebook panel, its first code cell, and a kernel that answers.
    const cell = page.locator('.jp-NotebookPanel .jp-CodeCell').first();
    await cell.waitFor();
    await page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]').first()
      .waitFor()
      .catch(() => {}); // older layouts have no indicator; running the cell still proves the connection
    // A paused kernel makes JupyterLab's debugger open the test's source in
    // front of the notebook (at any moment after connecting): bring the
    // notebook back before typing, and read the output whether it is in front or not.
    const notebookTab = page.locator('.lm-DockPanel-tabBar .lm-TabBar-tab', { hasText: config.notebook || '.ipynb' })
      .first();
    let kernelName = '';
    for (let attempt = 0; ; attempt++) {
      try {
        await notebookTab.click({ timeout: 5000 });
        await cell.locator('.jp-InputArea-editor').click({ timeout: 5000 });
        // The toolbar's Run button, not a key press: a key would go to the source view
        // if it came to the front in between; a click on a hidden button fails and is retried.
        await page.locator(RUN_BUTTON).first().click({ timeout: 5000 });
        break;
      } catch (err) {
        if (attempt >= 5) throw err;
      }
    }
    const output = cell.locator('.jp-OutputArea-output');
    await output.filter({ hasText: config.expect }).first().waitFor({ state: 'attached' });
    // The toolbar names the kernel once its session is up, and renders only
    // while the notebook is in front (the debugger may have brought the test's
    // source forward): bring it back and read, waiting a little for it.
    const nameLocator = page.locator('.jp-NotebookPanel .jp-Toolbar-kernelName').first();
    for (let i = 0; i < 50 && !kernelName.trim(); i++) {
      await notebookTab.click({ timeout: 1000 }).catch(() => {});
      kernelName = (await nameLocator.innerText({ timeout: 1000 }).catch(() => '')) || '';
      if (!kernelName.trim()) {
        // A narrow toolbar folds the name into its "..." menu; the status bar
        // shows it too, as "<kernel name> | Idle".
        const bar = (await page.locator('#jp-main-statusbar').innerText({ timeout: 1000 }).catch(() => '')) || '';
        const item = bar.split('\n').find((text) => / \| (Idle|Busy)/.test(text));
        if (item) kernelName = item.split(' | ')[0];
      }
      if (!kernelName.trim()) await page.waitForTimeout(200);
    }
    // The prompt shows the count once the reply has come.
    await cell.locator('.jp-InputPrompt').filter({ hasNotText: '*' }).first().waitFor({ state: 'attached' });
    const prompt = await cell.locator('.jp-InputPrompt').first().textContent();
    result = {
      ok: true,
      output: await output.first().textContent(),
      prompt,
      kernelName,
    };
  } catch (err) {
    result = { ok: false, error: String(err) };
  } finally {
    await page.screenshot({ path: config.screenshot, fullPage: false }).catch(() => {});
    await context.close();
  }
  result.console = log.slice(-30);
  process.stdout.write(JSON.stringify(result) + '\n');
  process.exit(result.ok ? 0 : 1);
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ ok: false, error: String(err) }) + '\n');
  process.exit(1);
});
