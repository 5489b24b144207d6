// Kakehashi portal, officer pages: the live what-if preview of the rules
// editor. As the officer edits the policy or the hypothetical connection,
// the text is sent (debounced) to /officer/rules/preview, which answers
// with the check diagnostics and the decision; nothing is saved. Every
// value from the server is put in the page as text, never as HTML.
'use strict';

(function () {
  var DEBOUNCE_MS = 300;

  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function setupRules(form) {
    var d = form.dataset;
    var lang = d.lang === 'en' ? 'en' : 'ja';
    var text = $('policy-text');
    var status = $('preview-status');
    var box = $('preview-decision');
    var diags = $('preview-diags');
    var steps = document.querySelector('#preview-steps tbody');
    var ids = ['wi-level', 'wi-class', 'wi-segment', 'wi-date', 'wi-time', 'wi-plan', 'wi-bcp', 'wi-dept', 'wi-mfa'];
    var seq = 0;
    var timer = null;

    function request() {
      var mfa = $('wi-mfa').value.trim();
      return {
        csrf: d.csrf,
        text: text.value,
        level: $('wi-level').value,
        class: $('wi-class').value,
        segment: $('wi-segment').value,
        date: $('wi-date').value,
        time: $('wi-time').value,
        plan: $('wi-plan').value,
        bcp: $('wi-bcp').checked,
        dept: $('wi-dept').value,
        mfa_age: mfa === '' ? null : Math.max(0, Math.floor(Number(mfa)) || 0)
      };
    }

    // Selects line `n` (from 1) of the editor.
    function goToLine(n) {
      var lines = text.value.split('\n');
      var start = 0;
      for (var i = 0; i < n - 1 && i < lines.length; i++) start += lines[i].length + 1;
      var end = start + (lines[n - 1] || '').length;
      text.focus();
      text.setSelectionRange(start, end);
      var lh = parseFloat(getComputedStyle(text).lineHeight) || 20;
      text.scrollTop = Math.max(0, (n - 5) * lh);
    }

    function renderDiagnostics(j) {
      clear(diags);
      var head = el('p', j.errors > 0 ? 'diag-head bad' : 'diag-head good');
      if (j.errors === 0) {
        head.textContent = d.msgNoerrors + (j.rules !== null ? ' (' + d.msgRules + ': ' + j.rules + ')' : '');
      } else {
        head.textContent = d.msgError + ' ' + j.errors + (j.warnings ? ', ' + d.msgWarning + ' ' + j.warnings : '');
      }
      diags.appendChild(head);
      if (!j.diagnostics.length) return;
      var ul = el('ul', 'diags');
      j.diagnostics.forEach(function (g) {
        var li = el('li', 'diag ' + g.severity);
        li.dataset.line = g.line;
        var where = g.line > 0 ? d.msgLine + ' ' + g.line + ' · ' + d.msgCol + ' ' + g.col : '';
        var sev = g.severity === 'error' ? d.msgError : d.msgWarning;
        var a = el(g.line > 0 ? 'button' : 'span', 'diag-where', where || sev);
        if (g.line > 0) {
          a.type = 'button';
          a.addEventListener('click', function () { goToLine(g.line); });
        }
        li.appendChild(a);
        li.appendChild(el('span', 'diag-sev', ' [' + sev + '] '));
        if (g.field) li.appendChild(el('code', 'diag-field', g.field));
        li.appendChild(el('span', 'diag-msg', ' ' + g.message));
        ul.appendChild(li);
      });
      diags.appendChild(ul);
    }

    function kv(dl, k, v) {
      dl.appendChild(el('dt', null, k));
      dl.appendChild(el('dd', null, v));
    }

    function renderDecision(j) {
      clear(box);
      box.className = '';
      if (j.decision === null) {
        box.dataset.allow = '';
        if (j.what_if_error) box.appendChild(el('p', 'status error', d.msgWhatif + ': ' + j.what_if_error));
        else box.appendChild(el('p', 'status error', d.msgInvalid));
        return;
      }
      var dec = j.decision;
      box.dataset.allow = dec.allow ? 'true' : 'false';
      box.className = dec.allow ? 'decision allow' : 'decision deny';
      var verdict = el('p', 'verdict');
      verdict.appendChild(el('strong', null, dec.allow ? d.msgAllow : d.msgDeny));
      if (!dec.allow && dec.reason) {
        verdict.appendChild(document.createTextNode(' '));
        verdict.appendChild(el('code', null, dec.reason)).id = 'preview-reason';
      }
      box.appendChild(verdict);
      if (!dec.allow) {
        var first = lang === 'en' ? dec.en : dec.ja;
        var second = lang === 'en' ? dec.ja : dec.en;
        if (first) box.appendChild(el('p', 'sentence', first));
        if (second) box.appendChild(el('p', 'sentence muted', second));
      }
      var dl = el('dl', 'facts');
      var rule = el('dd', null, dec.rule || d.msgNorule);
      rule.id = 'preview-rule';
      dl.appendChild(el('dt', null, d.msgRule));
      dl.appendChild(rule);
      kv(dl, d.msgAt, j.at || '');
      if (dec.allow) {
        var c = dec.controls;
        var yn = function (b) { return b ? d.msgYes : d.msgNo; };
        kv(dl, d.msgControls, [
          d.msgClipboard + ' ' + c.clipboard,
          d.msgDrive + ' ' + yn(c.drive),
          d.msgPrinter + ' ' + yn(c.printer),
          d.msgUsb + ' ' + yn(c.usb),
          d.msgPorts + ' ' + yn(c.ports),
          d.msgAudio + ' ' + yn(c.audio),
          d.msgSmartcard + ' ' + yn(c.smartcard)
        ].join(' · '));
        var l = dec.limits;
        var mins = function (s) { return s === null || s === undefined ? d.msgNone : Math.round(s / 60) + ' ' + d.msgMin; };
        kv(dl, d.msgLimits, [
          d.msgEndat + ' ' + (dec.end_at_local || d.msgNone),
          d.msgMaxdur + ' ' + mins(l.max_duration_secs),
          d.msgIdle + ' ' + mins(l.idle_timeout_secs),
          d.msgMfa + ' ' + mins(l.mfa_max_age_secs),
          d.msgStepup + ' ' + (l.step_up_required ? d.msgRequired : d.msgNotrequired)
        ].join(' · '));
      }
      box.appendChild(dl);
    }

    function renderSteps(j) {
      clear(steps);
      (j.steps || []).forEach(function (s) {
        var tr = el('tr', s.matched ? 'step yes' : 'step no');
        tr.appendChild(el('td', null, s.matched ? '✓' : '✗'));
        tr.appendChild(el('td', null, s.kind));
        tr.appendChild(el('td', null, s.rule));
        tr.appendChild(el('td', null, s.why));
        steps.appendChild(tr);
      });
    }

    async function run() {
      var mine = ++seq;
      status.textContent = d.msgChecking;
      form.dataset.previewState = 'pending';
      try {
        var r = await fetch(d.preview, {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          credentials: 'same-origin',
          body: JSON.stringify(request())
        });
        var j = null;
        try { j = await r.json(); } catch (e) { j = null; }
        if (mine !== seq) return;
        if (!r.ok || !j) {
          status.textContent = j ? (lang === 'en' ? j.message_en : j.message_ja) + ' (' + j.error + ')' : d.msgFailed;
          form.dataset.previewState = 'error';
          return;
        }
        renderDiagnostics(j);
        renderDecision(j);
        renderSteps(j);
        status.textContent = '';
        form.dataset.previewState = 'done';
      } catch (e) {
        if (mine === seq) {
          status.textContent = d.msgFailed;
          form.dataset.previewState = 'error';
        }
      }
    }

    function schedule() {
      window.clearTimeout(timer);
      timer = window.setTimeout(run, DEBOUNCE_MS);
    }

    text.addEventListener('input', schedule);
    ids.forEach(function (id) {
      var e = $(id);
      e.addEventListener('input', schedule);
      e.addEventListener('change', schedule);
    });
    run();
  }

  document.addEventListener('DOMContentLoaded', function () {
    var form = $('rules-editor');
    if (form) setupRules(form);
  });
})();
