// Kakehashi portal, the operator's live dashboard (/ops). The numbers come
// from /ops/events (server-sent events): a `snapshot` whenever something
// changed (at most once a second) and a `history` (one point a minute for
// 24 hours) when a minute passes. The server aggregates; the browser only
// draws. Every value from the server is put in the page as text, never as
// HTML.
'use strict';

(function () {
  var root = document.getElementById('ops');
  if (!root) return;
  var d = root.dataset;
  var lang = d.lang === 'en' ? 'en' : 'ja';
  var SVG = 'http://www.w3.org/2000/svg';
  var T = {
    ja: {
      live: 'ライブ更新中', updated: '最終更新', open: '（', close: '）', reconnecting: '再接続中…',
      closed: '更新が止まりました。ページを開き直してください。',
      refused: 'ログインの有効期限が切れたか、権限がなくなりました。ページを開き直してください。',
      level: 'レベル', unknown: '不明', none: 'なし',
      class: { home: '在宅', mobile: 'モバイル', satellite: 'サテライト' },
      transport: { quic: 'QUIC', tcp: 'TLS/TCP' },
      count: function (total, matched, shown) {
        return '接続中 ' + total + ' 件' + (matched !== total ? '（絞り込み一致 ' + matched + ' 件）' : '') +
          '、新しい順に ' + shown + ' 件を表示';
      },
      end: '終了', endWhat: 'デスク {desk}／端末 {device}／利用者 {user}',
      ended: 'セッションを終了しました: ', failed: '終了できませんでした: ',
      bcp: 'BCPモード実施中', everyone: '全職員', until: '期限', reason: '理由',
      state: { up: '稼働中', leaving: '停止処理中', missing: '応答なし' },
      thisGw: '（この画面）', seen: '秒前', cluster: 'クラスタ全体: '
    },
    en: {
      live: 'Live', updated: 'updated', open: ' (', close: ')', reconnecting: 'Reconnecting…',
      closed: 'Updates stopped. Reload the page.',
      refused: 'Your sign-in expired or the role was taken away. Reload the page.',
      level: 'Level ', unknown: 'unknown', none: 'none',
      class: { home: 'home', mobile: 'mobile', satellite: 'satellite office' },
      transport: { quic: 'QUIC', tcp: 'TLS/TCP' },
      count: function (total, matched, shown) {
        return total + ' live' + (matched !== total ? ' (' + matched + ' match the filter)' : '') +
          ', newest ' + shown + ' shown';
      },
      end: 'End', endWhat: 'desk {desk} / device {device} / user {user}',
      ended: 'Session ended: ', failed: 'Could not end the session: ',
      bcp: 'BCP mode in force', everyone: 'everyone', until: 'until', reason: 'reason',
      state: { up: 'up', leaving: 'stopping', missing: 'missing' },
      thisGw: ' (this page)', seen: ' s ago', cluster: 'whole cluster: '
    }
  }[lang];

  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function svg(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { e.setAttribute(k, String(attrs[k])); });
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function setConn(text, cls) {
    var c = $('ops-conn');
    c.textContent = text;
    c.className = 'ops-conn ' + (cls || '');
  }

  function metric(name, value) {
    document.querySelectorAll('[data-metric="' + name + '"]').forEach(function (e) {
      e.textContent = String(value);
    });
  }

  // A two-column table: label, number (data-metric="KIND:KEY" on the number).
  function table(id, kind, map, label) {
    var body = $(id).tBodies[0];
    clear(body);
    var keys = Object.keys(map);
    if (keys.length === 0) {
      var tr0 = el('tr');
      var td0 = el('td', 'ops-empty', T.none);
      td0.colSpan = 2;
      tr0.appendChild(td0);
      body.appendChild(tr0);
      return;
    }
    keys.forEach(function (k) {
      var tr = el('tr');
      tr.appendChild(el('th', null, label(k)));
      var td = el('td', null, map[k]);
      td.dataset.metric = kind + ':' + k;
      tr.appendChild(td);
      body.appendChild(tr);
    });
  }

  function levelName(k) { return k === 'unknown' ? T.unknown : T.level + k; }
  function className(k) { return T.class[k] || k; }
  function deptName(k) { return k === 'unknown' ? T.unknown : k; }
  function transportName(k) { return T.transport[k] || k; }

  var snap = null;
  var history = null;
  var seq = 0;
  var rowsKey = null;

  function render(s) {
    snap = s;
    metric('total', s.total);
    metric('agents', s.agents);
    metric('logins_minute', s.logins_minute);
    metric('logins_total', s.logins_total);
    var meter = $('ops-capacity');
    meter.value = Math.min(1, Math.max(0, s.capacity));
    meter.dataset.metric = 'capacity';
    meter.dataset.value = String(s.capacity);
    $('ops-capacity-text').textContent = s.total + ' / ' + s.max + ' (' + (s.capacity * 100).toFixed(1) + '%)';
    table('ops-by-level', 'level', s.by_level, levelName);
    table('ops-by-class', 'class', s.by_class, className);
    table('ops-by-dept', 'dept', s.by_dept, deptName);
    table('ops-by-transport', 'transport', s.by_transport, transportName);
    var denials = {};
    var texts = {};
    var sum = 0;
    s.denials_hour.forEach(function (x) { denials[x.code] = x.n; texts[x.code] = x.text; sum += x.n; });
    metric('denials_hour', sum);
    table('ops-denials', 'denial', denials, function (k) { return k; });
    // The sentence under each reason code.
    $('ops-denials').querySelectorAll('th').forEach(function (th) {
      var code = th.textContent;
      if (texts[code]) th.appendChild(el('span', 'ops-reason', texts[code]));
    });
    bcp(s.bcp);
    gateways(s.gateways, s.cluster_total);
    sessions(s.sessions);
    chart();
    seq += 1;
    d.seq = String(seq);
    d.at = String(s.at);
    setConn(T.live + T.open + T.updated + ' ' + clock(s.at, s.utc_offset) + T.close, 'ok');
  }

  // HH:MM:SS in the gateway's local time (as every other time on the page).
  function clock(t, off) {
    var x = new Date((t + (off || 0)) * 1000);
    var two = function (n) { return (n < 10 ? '0' : '') + n; };
    return two(x.getUTCHours()) + ':' + two(x.getUTCMinutes()) + ':' + two(x.getUTCSeconds());
  }

  function bcp(list) {
    var box = $('ops-bcp');
    clear(box);
    box.hidden = list.length === 0;
    list.forEach(function (b) {
      box.appendChild(el('p', null, T.bcp + ' — ' + (b.dept === null ? T.everyone : b.dept) + ' ／ ' +
        T.reason + ': ' + b.reason + ' ／ ' + T.until + ': ' + b.until));
    });
  }

  // A row per gateway of the cluster (hidden with one gateway).
  function gateways(list, total) {
    var card = $('ops-gateways-card');
    card.hidden = list.length < 2;
    var t = $('ops-cluster-total');
    t.hidden = list.length < 2;
    t.textContent = T.cluster + total;
    // Not `data-metric`: these come from the members' heartbeats in the
    // store, not from this gateway's metrics.
    t.dataset.cluster = 'total';
    t.dataset.value = String(total);
    var body = $('ops-gateways').tBodies[0];
    clear(body);
    list.forEach(function (m) {
      var tr = el('tr');
      tr.dataset.gateway = m.id;
      tr.dataset.state = m.state;
      if (m.state !== 'up') tr.className = 'ops-gw-' + m.state;
      tr.appendChild(el('th', null, m.id + (m.this ? T.thisGw : '')));
      tr.appendChild(el('td', null, T.state[m.state] || m.state));
      [['sessions', m.sessions], ['agents', m.agents], ['lag', m.lag]].forEach(function (x) {
        var td = el('td', null, x[1]);
        td.dataset.cluster = m.id + ':' + x[0];
        tr.appendChild(td);
      });
      tr.appendChild(el('td', null, m.seen + T.seen));
      body.appendChild(tr);
    });
  }

  function sessions(p) {
    $('ops-list-count').textContent = T.count(p.total, p.matched, p.list.length);
    var key = p.list.map(function (x) { return x.id; }).join(',');
    if (key === rowsKey) return;
    rowsKey = key;
    var body = $('ops-sessions').tBodies[0];
    clear(body);
    p.list.forEach(function (x) {
      var tr = el('tr');
      tr.dataset.session = x.id;
      tr.dataset.desk = x.desk;
      tr.dataset.device = x.device;
      [x.since, x.desk, x.device, x.user || '—', levelName(x.level), className(x.class), deptName(x.dept),
        transportName(x.transport), x.gateway || ''].forEach(function (v) { tr.appendChild(el('td', null, v)); });
      var td = el('td');
      var b = el('button', 'danger small', T.end);
      b.type = 'button';
      b.dataset.end = x.id;
      b.dataset.what = T.endWhat.replace('{desk}', x.desk).replace('{device}', x.device).replace('{user}', x.user || '—');
      td.appendChild(b);
      tr.appendChild(td);
      body.appendChild(tr);
    });
  }

  // The last 24 hours: sessions, logins and refusals per minute, and the live point.
  function chart() {
    var c = $('ops-chart');
    if (!c || !history || !snap) return;
    clear(c);
    var W = 1000, H = 220, L = 44, R = 990, TOP = 12, B = 190;
    var now = snap.at, from = now - 86400;
    var pts = history.points.filter(function (p) { return p[0] >= from; });
    var max = 1;
    pts.forEach(function (p) { max = Math.max(max, p[1], p[2], p[3]); });
    max = Math.max(max, snap.total);
    var step = Math.pow(10, Math.floor(Math.log10(max)));
    var top = Math.ceil(max / step) * step;
    if (top === max && max > 1) top += step;
    function x(t) { return L + (R - L) * (t - from) / 86400; }
    function y(v) { return B - (B - TOP) * v / top; }
    [0, top / 2, top].forEach(function (v) {
      c.appendChild(svg('line', { x1: L, x2: R, y1: y(v), y2: y(v), class: 'grid' }));
      c.appendChild(svg('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end', 'font-size': 11, class: 'axis' },
        Number.isInteger(v) ? v : v.toFixed(1)));
    });
    var off = history.utc_offset || 0;
    // Hour ticks every 3 hours, in the gateway's local time.
    var first = Math.ceil((from + off) / 10800) * 10800 - off;
    for (var t = first; t <= now; t += 10800) {
      var hh = Math.floor((((t + off) % 86400) + 86400) % 86400 / 3600);
      c.appendChild(svg('line', { x1: x(t), x2: x(t), y1: TOP, y2: B, class: 'grid' }));
      c.appendChild(svg('text', { x: x(t), y: H - 12, 'text-anchor': 'middle', 'font-size': 11, class: 'axis' },
        (hh < 10 ? '0' : '') + hh + ':00'));
    }
    function line(idx, cls, live) {
      var p = pts.map(function (q) { return x(q[0]).toFixed(1) + ',' + y(q[idx]).toFixed(1); });
      if (live !== undefined) p.push(x(now).toFixed(1) + ',' + y(live).toFixed(1));
      if (p.length === 1) p.unshift((x(now) - 2).toFixed(1) + ',' + p[0].split(',')[1]);
      if (p.length > 0) c.appendChild(svg('polyline', { points: p.join(' '), class: cls }));
    }
    line(2, 'logins');
    line(3, 'denials');
    line(1, 'sessions', snap.total);
    c.appendChild(svg('circle', { cx: x(now), cy: y(snap.total), r: 4, class: 'now' }));
    c.dataset.points = String(pts.length);
    c.dataset.last = String(snap.total);
  }

  var es = null;
  var filter = '';

  function connect() {
    if (es) es.close();
    var url = d.events;
    if (filter) url += (url.indexOf('?') < 0 ? '?' : '&') + 'q=' + encodeURIComponent(filter);
    es = new EventSource(url);
    es.addEventListener('snapshot', function (e) { render(JSON.parse(e.data)); });
    es.addEventListener('history', function (e) { history = JSON.parse(e.data); chart(); });
    es.addEventListener('refused', function () { es.close(); setConn(T.refused, 'error'); });
    es.onerror = function () {
      // The browser reconnects by itself unless the server refused the stream.
      setConn(es.readyState === EventSource.CLOSED ? T.closed : T.reconnecting, 'error');
    };
  }

  var timer = null;
  $('ops-filter').addEventListener('input', function (e) {
    clearTimeout(timer);
    timer = setTimeout(function () {
      var v = e.target.value.trim();
      if (v === filter) return;
      filter = v;
      rowsKey = null;
      connect();
    }, 300);
  });

  // Ending a session: a reason is required; the answer is JSON.
  var dialog = $('ops-end-dialog');
  var form = $('ops-end-form');
  var status = $('ops-end-status');
  $('ops-sessions').addEventListener('click', function (e) {
    var b = e.target.closest('button[data-end]');
    if (!b) return;
    $('ops-end-id').value = b.dataset.end;
    $('ops-end-what').textContent = b.dataset.what;
    $('ops-end-reason').value = '';
    status.hidden = true;
    dialog.showModal();
    $('ops-end-reason').focus();
  });
  $('ops-end-cancel').addEventListener('click', function () { dialog.close(); });
  form.addEventListener('submit', async function (e) {
    e.preventDefault();
    var confirm = $('ops-end-confirm');
    confirm.disabled = true;
    try {
      var r = await fetch(form.action, {
        method: 'POST',
        headers: { Accept: 'application/json' },
        body: new URLSearchParams(new FormData(form)),
        credentials: 'same-origin'
      });
      var j = await r.json().catch(function () { return {}; });
      if (r.ok && j.ended !== undefined) {
        dialog.close();
        var n = $('ops-notice');
        n.textContent = T.ended + j.id;
        n.hidden = false;
      } else {
        status.hidden = false;
        status.className = 'status error';
        status.textContent = T.failed + (lang === 'en' ? j.message_en : j.message_ja) + ' (' + (j.error || r.status) + ')';
      }
    } catch (err) {
      status.hidden = false;
      status.className = 'status error';
      status.textContent = T.failed + err;
    } finally {
      confirm.disabled = false;
    }
  });

  connect();
})();
