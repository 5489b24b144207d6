// Drives Debian's chromium (through playwright-core) against the Kakehashi
// portal, with a CDP virtual authenticator standing in for a platform
// authenticator with user verification (Windows Hello / Touch ID).
//
// Long-lived on purpose: the enrollment and the later logins must use the
// same browser page, hence the same virtual authenticator and credential.
// Commands arrive as JSON lines on stdin; each gets exactly one JSON line
// on stdout ({"ok": true, …} or {"ok": false, "error": "…"}):
//
//   {"cmd": "enroll", "url": PORTAL_ENROLL_URL, "user": ID, "code": CODE}
//     → {ok, lang, title, status, credentials: [{signCount, resident}]}
//   {"cmd": "login", "url": LOGIN_URL, "user": ID}
//     → {ok, lang, title, landed: "http://127.0.0.1:PORT/callback", page}
//       (the portal redirected to the CLI's loopback port; the code in the
//       query string is not printed)
//   {"cmd": "login_refused", "url": LOGIN_URL, "user": ID, "uv": false}
//     → {ok, status}: the ceremony ended with an error shown on the page and
//       no redirect; "uv": false first turns the authenticator's user
//       verification off (and it is turned back on afterwards)
//   {"cmd": "portal_login", "url": PORTAL_PAGE_URL, "user": ID}
//     → {ok, status, lang, title, path}: opens a page that needs a portal
//       session, signs in on its form (WebAuthn) and lands back on the page
//   {"cmd": "open", "url": URL}
//     → {ok, status, lang, title, path, text}: the HTTP status and main text
//   {"cmd": "fill", "selector": CSS, "value": TEXT}   (inputs, textareas, dates)
//   {"cmd": "select", "selector": CSS, "value": VALUE}
//   {"cmd": "edit", "selector": CSS, "after": TEXT, "from": TEXT, "to": TEXT}
//     → {ok}: in the textarea, replaces the first `from` after `after` with
//       `to`, as typing would (input events fire)
//   {"cmd": "wait", "selector": CSS} → {ok, text}: waits until it is visible
//   {"cmd": "text", "selector": CSS} → {ok, text}
//   {"cmd": "submit", "selector": CSS}
//     → {ok, status, lang, title, path, text}: clicks a submit button and
//       waits for the page it leads to (after redirects)
//   {"cmd": "screenshot", "path": FILE} → {ok, path}: the whole page, PNG
//   {"cmd": "clear_cookies"} → {ok}: ends the portal session in the browser
//   {"cmd": "cookie_header", "url": URL} → {ok, cookie}: the Cookie header the
//       browser would send to URL (benches replay the portal session with it)
//   {"cmd": "fetch_status", "path": PATH} → {ok, status}: a GET from the page
//   {"cmd": "ops_mark"} → {ok, marker}: a value kept in the page's window (a
//       reload would lose it)
//   {"cmd": "ops_read", "after": SEQ} → {ok, seq, at, marker, navigations,
//       metrics: {"total": N, "level:2": N, …}, sessions: [{id, desk, device,
//       user}], count, bcp, chart: {points, last}}: the dashboard once it
//       has drawn a snapshot newer than SEQ (default 0)
//   {"cmd": "ops_filter", "text": T} → {ok}: types into the session filter
//   {"cmd": "ops_end", "desk": DESK, "reason": R} → {ok, notice}: "end"
//       on the newest session of DESK, the reason typed, confirmed
//   {"cmd": "quit"}
//
// Environment: KAKEHASHI_CHROMIUM (default /usr/bin/chromium).
// Startup prints {"ok": true, "ready": true, "browser": VERSION}.

import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const STEP_MS = 30_000;

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

async function pageFacts(page) {
  return {
    lang: await page.evaluate(() => document.documentElement.lang),
    title: (await page.locator('h1').first().textContent())?.trim() ?? '',
  };
}

async function main() {
  const executablePath = process.env.KAKEHASHI_CHROMIUM || '/usr/bin/chromium';
  const browser = await chromium.launch({
    executablePath,
    headless: true,
    // Chromium runs as root in the test machines: no user-namespace sandbox.
    args: ['--no-sandbox', '--no-proxy-server', '--disable-dev-shm-usage'],
    timeout: STEP_MS,
  });
  const context = await browser.newContext({ locale: 'ja-JP' });
  const page = await context.newPage();
  let navigations = 0;
  page.on('framenavigated', (f) => {
    if (f === page.mainFrame()) navigations += 1;
  });
  page.setDefaultTimeout(STEP_MS);
  const cdp = await context.newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  const browserLogs = [];
  page.on('console', (m) => browserLogs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => browserLogs.push(`pageerror: ${e.message}`));
  // The status of the last top-level page (redirects skipped).
  let lastStatus = null;
  page.on('response', (r) => {
    const req = r.request();
    if (req.isNavigationRequest() && req.frame() === page.mainFrame() && !(r.status() >= 300 && r.status() < 400)) {
      lastStatus = r.status();
    }
  });

  async function landed() {
    const u = new URL(page.url());
    return {
      status: lastStatus,
      ...(await pageFacts(page)),
      path: `${u.pathname}${u.search}`,
      text: (await page.locator('main').innerText()).trim().slice(0, 4000),
    };
  }

  async function credentials() {
    const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
    return credentials.map((c) => ({ signCount: c.signCount, resident: c.isResidentCredential }));
  }

  // Fills the user id and submits the form of the page at `url`.
  async function submit(url, user, fill) {
    await page.goto(url);
    const facts = await pageFacts(page);
    await page.locator('#user').fill(user);
    if (fill) await fill();
    await page.locator('button[type=submit]').click();
    return facts;
  }

  const commands = {
    async portal_login({ url, user }) {
      await page.goto(url);
      const form = page.locator('form[data-mode=portal]');
      if ((await form.count()) === 0) throw new Error(`no sign-in form at ${url} (already signed in?)`);
      await page.locator('#user').fill(user);
      await page.locator('button[type=submit]').click();
      const ok = await Promise.race([
        form.waitFor({ state: 'detached' }).then(() => true),
        page.locator('#status.error').waitFor().then(() => false),
      ]);
      if (!ok) throw new Error(`sign-in refused: ${(await page.locator('#status').textContent()).trim()}`);
      await page.waitForLoadState('load');
      return landed();
    },

    async open({ url }) {
      await page.goto(url);
      return landed();
    },

    async fill({ selector, value }) {
      await page.locator(selector).fill(value);
      return {};
    },

    async select({ selector, value }) {
      await page.locator(selector).selectOption(value);
      return {};
    },

    async edit({ selector, after, from, to }) {
      const box = page.locator(selector);
      const text = await box.inputValue();
      const start = text.indexOf(after);
      if (start < 0) throw new Error(`${JSON.stringify(after)} is not in ${selector}`);
      const at = text.indexOf(from, start);
      if (at < 0) throw new Error(`${JSON.stringify(from)} is not after ${JSON.stringify(after)}`);
      await box.fill(text.slice(0, at) + to + text.slice(at + from.length));
      // Select the change and scroll to it, as an editor would show it.
      await box.evaluate((e, [at, len]) => {
        e.focus();
        e.setSelectionRange(at, at + len);
        const line = e.value.slice(0, at).split('\n').length;
        const lh = parseFloat(getComputedStyle(e).lineHeight) || 18;
        e.scrollTop = Math.max(0, (line - 8) * lh);
      }, [at, to.length]);
      return {};
    },

    async wait({ selector }) {
      const l = page.locator(selector).first();
      await l.waitFor({ state: 'visible' });
      return { text: (await l.innerText()).trim() };
    },

    async text({ selector }) {
      return { text: (await page.locator(selector).first().innerText()).trim() };
    },

    async submit({ selector }) {
      // A POST answered with 303 commits one document: the page it leads to.
      await Promise.all([
        page.waitForEvent('framenavigated', (f) => f === page.mainFrame()),
        page.locator(selector).click(),
      ]);
      await page.waitForLoadState('load');
      return landed();
    },

    async screenshot({ path }) {
      await page.screenshot({ path, fullPage: true });
      return { path };
    },

    async clear_cookies() {
      await context.clearCookies();
      return {};
    },

    async cookie_header({ url }) {
      const cookies = await context.cookies(url);
      return { cookie: cookies.map((c) => `${c.name}=${c.value}`).join('; ') };
    },

    async enroll({ url, user, code }) {
      const facts = await submit(url, user, () => page.locator('#code').fill(code));
      const status = page.locator('#status');
      await page.locator('#status.ok, #status.error').waitFor();
      const text = (await status.textContent()).trim();
      if (await status.evaluate((e) => e.classList.contains('error'))) {
        throw new Error(`enrollment refused by the portal: ${text}`);
      }
      return { ...facts, status: text, credentials: await credentials() };
    },

    async login({ url, user }) {
      const facts = await submit(url, user);
      const landed = await Promise.race([
        page
          .waitForURL((u) => u.hostname === '127.0.0.1' && u.pathname === '/callback')
          .then(() => true),
        page
          .locator('#status.error')
          .waitFor()
          .then(() => false),
      ]);
      if (!landed) {
        const text = (await page.locator('#status').textContent()).trim();
        throw new Error(`login refused by the portal: ${text}`);
      }
      const u = new URL(page.url());
      return {
        ...facts,
        landed: `${u.origin}${u.pathname}`,
        page: (await page.locator('body').innerText()).trim(),
        credentials: await credentials(),
      };
    },

    async login_refused({ url, user, uv }) {
      if (uv === false) {
        await cdp.send('WebAuthn.setUserVerified', { authenticatorId, isUserVerified: false });
      }
      try {
        await submit(url, user);
        await page.locator('#status.error').waitFor();
        const u = new URL(page.url());
        if (u.hostname === '127.0.0.1') throw new Error('redirected to the loopback port');
        return { status: (await page.locator('#status').textContent()).trim() };
      } finally {
        await cdp.send('WebAuthn.setUserVerified', { authenticatorId, isUserVerified: true });
      }
    },

    async fetch_status({ path }) {
      const status = await page.evaluate(async (p) => {
        const ctl = new AbortController();
        const r = await fetch(p, { signal: ctl.signal });
        ctl.abort();
        return r.status;
      }, path);
      return { status };
    },

    async ops_mark() {
      const marker = `m-${Math.random().toString(36).slice(2)}`;
      await page.evaluate((m) => { window.__kakehashiMarker = m; }, marker);
      return { marker };
    },

    async ops_read({ after }) {
      await page.waitForFunction(
        (a) => Number(document.getElementById('ops')?.dataset.seq ?? 0) > a,
        after ?? 0,
      );
      return await page.evaluate(() => {
        const root = document.getElementById('ops');
        const metrics = {};
        document.querySelectorAll('[data-metric]').forEach((e) => {
          const v = e.dataset.value ?? e.textContent;
          metrics[e.dataset.metric] = Number(v);
        });
        const sessions = [...document.querySelectorAll('#ops-sessions tbody tr[data-session]')].map((tr) => ({
          id: tr.dataset.session,
          desk: tr.dataset.desk,
          device: tr.dataset.device,
          user: tr.children[3].textContent,
        }));
        const chart = document.getElementById('ops-chart');
        const bcp = document.getElementById('ops-bcp');
        return {
          seq: Number(root.dataset.seq),
          at: Number(root.dataset.at),
          marker: window.__kakehashiMarker ?? null,
          metrics,
          sessions,
          count: document.getElementById('ops-list-count').textContent,
          bcp: bcp.hidden ? null : bcp.textContent,
          chart: {
            points: Number(chart.dataset.points ?? -1),
            last: Number(chart.dataset.last ?? -1),
            lines: chart.querySelectorAll('polyline').length,
          },
        };
      }).then((r) => ({ ...r, navigations }));
    },

    async ops_filter({ text }) {
      await page.locator('#ops-filter').fill(text);
      return {};
    },

    async ops_end({ desk, reason }) {
      const row = page.locator(`#ops-sessions tbody tr[data-desk="${desk}"]`).first();
      const id = await row.getAttribute('data-session');
      await row.locator('button[data-end]').click();
      await page.locator('#ops-end-dialog[open]').waitFor();
      await page.locator('#ops-end-reason').fill(reason);
      const answer = page.waitForResponse((r) => r.url().includes('/ops/sessions/end'));
      await page.locator('#ops-end-confirm').click();
      const r = await answer;
      if (!r.ok()) throw new Error(`ending ${id} refused: ${r.status()} ${await r.text()}`);
      await page.locator('#ops-notice:not([hidden])').waitFor();
      return { id, notice: (await page.locator('#ops-notice').textContent()).trim() };
    },
  };

  out({ ok: true, ready: true, browser: browser.version() });
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let msg;
    try {
      msg = JSON.parse(line);
    } catch (e) {
      out({ ok: false, error: `not JSON: ${e.message}` });
      continue;
    }
    if (msg.cmd === 'quit') break;
    const run = commands[msg.cmd];
    if (!run) {
      out({ ok: false, error: `unknown command ${msg.cmd}` });
      continue;
    }
    try {
      out({ ok: true, ...(await run(msg)) });
    } catch (e) {
      out({ ok: false, error: String(e?.message ?? e), url: page.url(), console: browserLogs.slice(-20) });
    }
  }
  await browser.close();
}

main().catch((e) => {
  out({ ok: false, fatal: true, error: String(e?.stack ?? e) });
  process.exit(1);
});
