// A small client of the Chrome DevTools Protocol over --remote-debugging-pipe (fd 3: to the
// browser, fd 4: from it; messages are JSON ended by a NUL byte). No downloaded browser and no
// library: Debian's chromium and Node's standard library.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export class Browser {
  static async launch(executable, { width = 1280, height = 900 } = {}) {
    const profile = mkdtempSync(join(tmpdir(), 'tern-chromium-'));
    const args = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
      '--no-first-run', '--no-default-browser-check', '--remote-debugging-pipe',
      `--user-data-dir=${profile}`, `--window-size=${width},${height}`, 'about:blank'];
    const child = spawn(executable, args, { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => { stderr = (stderr + d).slice(-4000); });
    const browser = new Browser(child, profile, () => stderr);
    await new Promise((resolve, reject) => {
      child.once('error', reject);
      child.once('spawn', resolve);
    });
    await browser.send('Browser.getVersion');
    return browser;
  }

  constructor(child, profile, stderr) {
    this.child = child;
    this.profile = profile;
    this.stderr = stderr;
    this.nextId = 1;
    this.pending = new Map();
    this.listeners = [];
    let buffer = Buffer.alloc(0);
    child.stdio[4].on('data', (chunk) => {
      buffer = Buffer.concat([buffer, chunk]);
      let end;
      while ((end = buffer.indexOf(0)) >= 0) {
        const message = JSON.parse(buffer.subarray(0, end).toString('utf8'));
        buffer = buffer.subarray(end + 1);
        if (message.id && this.pending.has(message.id)) {
          const { resolve, reject, method } = this.pending.get(message.id);
          this.pending.delete(message.id);
          if (message.error) reject(new Error(`${method}: ${message.error.message}`));
          else resolve(message.result);
        } else {
          for (const listener of this.listeners) listener(message);
        }
      }
    });
    child.once('exit', (code) => {
      for (const { reject, method } of this.pending.values()) {
        reject(new Error(`chromium exited (${code}) during ${method}: ${this.stderr()}`));
      }
      this.pending.clear();
    });
  }

  send(method, params = {}, sessionId) {
    const id = this.nextId++;
    const message = { id, method, params };
    if (sessionId) message.sessionId = sessionId;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, method });
      this.child.stdio[3].write(JSON.stringify(message) + '\0');
    });
  }

  async newPage() {
    const { targetId } = await this.send('Target.createTarget', { url: 'about:blank' });
    const { sessionId } = await this.send('Target.attachToTarget', { targetId, flatten: true });
    const page = new Page(this, sessionId);
    await page.send('Page.enable');
    await page.send('Runtime.enable');
    this.listeners.push((m) => {
      if (m.sessionId !== sessionId) return;
      if (m.method === 'Runtime.consoleAPICalled' || m.method === 'Runtime.exceptionThrown') page.log.push(m);
      if (m.method === 'Page.javascriptDialogOpening') page.send('Page.handleJavaScriptDialog', { accept: true });
    });
    return page;
  }

  async close() {
    try { await this.send('Browser.close'); } catch (_) { /* already gone */ }
    if (this.child.exitCode === null) {
      const exited = new Promise((resolve) => this.child.once('exit', resolve));
      this.child.kill('SIGKILL');
      await exited;
    }
    // Chromium's helpers may still be writing the profile: removing it is best effort.
    try { rmSync(this.profile, { recursive: true, force: true, maxRetries: 5 }); } catch (_) { /* left in /tmp */ }
  }
}

export class Page {
  constructor(browser, sessionId) {
    this.browser = browser;
    this.sessionId = sessionId;
    this.log = [];
  }

  send(method, params = {}) { return this.browser.send(method, params, this.sessionId); }

  async goto(url) { await this.send('Page.navigate', { url }); }

  // Evaluates an expression (a string) in the page and returns its value.
  async eval(expression) {
    const answer = await this.send('Runtime.evaluate', { expression, returnByValue: true, awaitPromise: true });
    if (answer.exceptionDetails) {
      throw new Error(`page: ${answer.exceptionDetails.exception?.description || answer.exceptionDetails.text}`);
    }
    return answer.result.value;
  }

  // Waits until `expression` is truthy in the page; fails with `what` and the last value.
  async waitFor(expression, what, timeoutMs = 20000) {
    const until = Date.now() + timeoutMs;
    let last;
    while (Date.now() < until) {
      try { last = await this.eval(expression); } catch (error) { last = error.message; }
      if (last) return last;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${JSON.stringify(last)})`);
  }

  async screenshot(path) {
    const { writeFileSync } = await import('node:fs');
    const { data } = await this.send('Page.captureScreenshot', { format: 'png', captureBeyondViewport: false });
    writeFileSync(path, Buffer.from(data, 'base64'));
  }

  async viewport(width, height, mobile = false) {
    await this.send('Emulation.setDeviceMetricsOverride', { width, height, deviceScaleFactor: mobile ? 2 : 1, mobile });
  }
}
