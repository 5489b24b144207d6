// Kakehashi portal: runs the WebAuthn ceremonies of the enrollment, login
// and "my devices" pages. Binary WebAuthn fields travel as base64url text
// (no padding) in JSON; the browser API wants ArrayBuffers.
'use strict';

(function () {
  function b64uToBuf(s) {
    var b64 = s.replace(/-/g, '+').replace(/_/g, '/');
    while (b64.length % 4) b64 += '=';
    var bin = atob(b64);
    var out = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  function bufToB64u(buf) {
    var bytes = new Uint8Array(buf);
    var bin = '';
    for (var i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function withIds(list) {
    if (!list) return list;
    return list.map(function (c) {
      var copy = Object.assign({}, c);
      copy.id = b64uToBuf(c.id);
      return copy;
    });
  }

  // CreationChallengeResponse -> CredentialCreationOptions
  function creationOptions(o) {
    var pk = Object.assign({}, o.publicKey);
    pk.challenge = b64uToBuf(pk.challenge);
    pk.user = Object.assign({}, pk.user, { id: b64uToBuf(pk.user.id) });
    pk.excludeCredentials = withIds(pk.excludeCredentials);
    return { publicKey: pk };
  }

  // RequestChallengeResponse -> CredentialRequestOptions
  function requestOptions(o) {
    var pk = Object.assign({}, o.publicKey);
    pk.challenge = b64uToBuf(pk.challenge);
    pk.allowCredentials = withIds(pk.allowCredentials);
    return { publicKey: pk };
  }

  // PublicKeyCredential (create) -> RegisterPublicKeyCredential JSON
  function encodeRegistration(c) {
    return {
      id: c.id,
      rawId: bufToB64u(c.rawId),
      type: c.type,
      response: {
        attestationObject: bufToB64u(c.response.attestationObject),
        clientDataJSON: bufToB64u(c.response.clientDataJSON)
      },
      extensions: {}
    };
  }

  // PublicKeyCredential (get) -> PublicKeyCredential JSON
  function encodeAssertion(c) {
    return {
      id: c.id,
      rawId: bufToB64u(c.rawId),
      type: c.type,
      response: {
        authenticatorData: bufToB64u(c.response.authenticatorData),
        clientDataJSON: bufToB64u(c.response.clientDataJSON),
        signature: bufToB64u(c.response.signature),
        userHandle: c.response.userHandle ? bufToB64u(c.response.userHandle) : null
      },
      extensions: {}
    };
  }

  function setup(form) {
    var lang = form.dataset.lang === 'en' ? 'en' : 'ja';
    var status = form.querySelector('.status');
    var button = form.querySelector('button[type=submit]');

    function show(kind, text) {
      status.className = 'status ' + kind;
      status.textContent = text;
      status.hidden = false;
    }

    async function post(url, body) {
      var r = await fetch(url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        credentials: 'same-origin',
        body: JSON.stringify(body)
      });
      var j = null;
      try { j = await r.json(); } catch (e) { j = null; }
      if (!r.ok) {
        var text = j ? (lang === 'en' ? j.message_en : j.message_ja) : form.dataset.msgFailed;
        var err = new Error(text || form.dataset.msgFailed);
        err.portal = true;
        err.code = j && j.error;
        throw err;
      }
      return j;
    }

    function explain(e) {
      if (e && e.portal) return e.message + (e.code ? ' (' + e.code + ')' : '');
      if (e && (e.name === 'NotAllowedError' || e.name === 'AbortError')) return form.dataset.msgCancelled;
      if (e && e.name === 'InvalidStateError') return form.dataset.msgFailed + ' (credential_exists)';
      return form.dataset.msgFailed;
    }

    async function enroll() {
      var user = form.querySelector('#user').value.trim();
      var code = form.querySelector('#code').value.trim();
      var start = await post('/api/enroll/start', { user: user, code: code });
      show('info', form.dataset.msgTouch);
      var cred = await navigator.credentials.create(creationOptions(start.options));
      await post('/api/enroll/finish', { ceremony: start.ceremony, credential: encodeRegistration(cred) });
      show('ok', form.dataset.msgEnrolled);
      form.querySelector('#code').value = '';
    }

    async function login() {
      var user = form.querySelector('#user').value.trim();
      var start = await post('/api/login/start', { user: user });
      show('info', form.dataset.msgTouch);
      var cred = await navigator.credentials.get(requestOptions(start.options));
      var credential = encodeAssertion(cred);
      if (form.dataset.mode === 'loopback') {
        var body = {
          ceremony: start.ceremony,
          credential: credential,
          redirect_uri: form.dataset.redirectUri,
          state: form.dataset.state,
          code_challenge: form.dataset.codeChallenge,
          code_challenge_method: 'S256'
        };
        if (form.dataset.device) body.device = form.dataset.device;
        var done = await post('/api/login/finish', body);
        show('ok', form.dataset.msgRedirecting);
        window.location.assign(done.redirect);
        window.setTimeout(function () { show('ok', form.dataset.msgReturned); }, 3000);
      } else {
        var s = await post('/api/session/finish', { ceremony: start.ceremony, credential: credential });
        // data-next: the portal page that asked for the sign-in (a local path only).
        var next = form.dataset.next;
        if (next && /^\/(?![\/\\])/.test(next)) window.location.assign(next);
        else window.location.assign(s.redirect + (lang === 'en' ? '?lang=en' : ''));
      }
    }

    form.addEventListener('submit', async function (ev) {
      ev.preventDefault();
      if (!window.PublicKeyCredential || !navigator.credentials) {
        show('error', form.dataset.msgUnsupported);
        return;
      }
      button.disabled = true;
      status.hidden = true;
      try {
        if (form.dataset.portal === 'enroll') await enroll(); else await login();
      } catch (e) {
        show('error', explain(e));
      } finally {
        button.disabled = false;
      }
    });
  }

  document.addEventListener('DOMContentLoaded', function () {
    var forms = document.querySelectorAll('form[data-portal]');
    for (var i = 0; i < forms.length; i++) setup(forms[i]);
  });
})();
