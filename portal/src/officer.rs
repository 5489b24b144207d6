//! The security officer's pages (role `officer` only, see [`super::access`]):
//! ルール (the access policy as TOML, with a live what-if preview), デスク
//! (confidentiality level and segment of each desk), 端末 (block and
//! unblock devices) and BCP (declare and end), and the BCP banner that every
//! portal page carries while a declaration is in force.
//!
//! Every change is one store transaction with its audit record: the same
//! actions and validation as the CLI (`policy.import`, `desk.set`,
//! `device.block` with `token.revoke_all`, `device.unblock`, `bcp.declare`,
//! `bcp.end`), actor `user:<id>`, and the reason (理由) the officer typed,
//! which every form requires. A running gateway sees each change in its
//! audit feed and re-decides its live sessions within `[policy] watch_ms`.
//!
//! | route | what |
//! |---|---|
//! | `GET /officer` | → `/officer/rules` |
//! | `GET /officer/rules[?version=N]` | the policy in force (or version N) in the editor, the what-if preview, the history |
//! | `POST /officer/rules/preview` | JSON `{csrf, text, level, class, segment, date, time, plan, bcp, dept, mfa_age}` → diagnostics and the decision |
//! | `POST /officer/rules` | form `csrf, base_version, text, reason` → a new version in force |
//! | `GET /officer/desks`, `POST /officer/desks` | list; form `csrf, id, level, segment, service, reason` |
//! | `GET /officer/devices`, `POST /officer/devices/block`, `POST /officer/devices/unblock` | list; form `csrf, id, [status], reason` |
//! | `GET /officer/bcp`, `POST /officer/bcp/declare`, `POST /officer/bcp/end` | form `csrf, scope, dept, reason, until_date, until_time`; form `csrf, id, reason` |

use std::collections::BTreeSet;
use std::fmt::Write as _;

use axum::body::Body;
use axum::extract::rejection::{FormRejection, JsonRejection};
use axum::extract::{Form, RawQuery, State};
use axum::http::{header, HeaderMap, Request, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use kakehashi_policy as pol;
use kakehashi_store::{Audit, Bcp, BcpScope, BcpSpec, DeskService, DeviceStatus, Segment};
use serde::Deserialize;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, UtcOffset};
use tracing::{info, warn};

use super::access::{get_refused, Need, Refused, Visitor};
use crate::html::{class_name, esc, html, page, status_name, switch_link, Lang, BANNER_SLOT};
use crate::state::{Peer, PortalState};

/// Largest request body of the policy editor's routes: a 1 MiB policy
/// (the store's limit) form-encoded is larger than the portal's default.
pub(super) const MAX_POLICY_BODY: usize = 2 * 1024 * 1024;
/// Longest reason (理由), in characters.
const MAX_REASON_CHARS: usize = 500;
/// Versions listed in the history.
const HISTORY: i64 = 30;
/// Largest page the BCP banner is put into.
const MAX_PAGE: usize = 4 * 1024 * 1024;

// ------------------------------------------------------------ shared bits

/// A message at the top of a page.
#[derive(Debug, Clone)]
pub(super) enum Notice {
    Ok(String),
    Error(String),
}

impl Notice {
    pub(super) fn html(&self) -> String {
        let (class, role, text) = match self {
            Notice::Ok(t) => ("ok", "status", t),
            Notice::Error(t) => ("error", "alert", t),
        };
        format!(
            r#"<div id="notice" class="status {class}" role="{role}">{}</div>"#,
            esc(text)
        )
    }
}

/// One value of a query string.
pub(super) fn query_param(q: Option<&str>, key: &str) -> Option<String> {
    url::form_urlencoded::parse(q?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// `path?k=v&…` keeping the page language.
pub(super) fn link(path: &str, lang: Lang, pairs: &[(&str, &str)]) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        ser.append_pair(k, v);
    }
    if lang == Lang::En {
        ser.append_pair("lang", "en");
    }
    let q = ser.finish();
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{q}")
    }
}

/// 303 to `to` after a change (so a reload does not post again).
pub(super) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// The reason (理由) an officer gives: required, one line, bounded.
pub(super) fn check_reason(lang: Lang, r: &str, required: bool) -> Result<String, Notice> {
    let r = r.trim();
    if r.is_empty() && required {
        return Err(Notice::Error(
            lang.t(
                "理由を入力してください（監査ログに記録されます）。",
                "Enter a reason (it is kept in the audit log).",
            )
            .into(),
        ));
    }
    if r.chars().count() > MAX_REASON_CHARS || r.chars().any(char::is_control) {
        return Err(Notice::Error(
            lang.t(
                "理由は改行を含まない500文字以内で入力してください。",
                "The reason must be one line of at most 500 characters.",
            )
            .into(),
        ));
    }
    Ok(r.to_owned())
}

/// A failed store write as a notice and a status.
pub(super) fn write_failed(lang: Lang, e: kakehashi_store::Error) -> (StatusCode, Notice) {
    use kakehashi_store::Error as E;
    match e {
        E::NotFound { .. } => (
            StatusCode::NOT_FOUND,
            Notice::Error(lang.t("対象が見つかりません。", "Not found.").into()),
        ),
        E::Conflict { state, .. } => (
            StatusCode::CONFLICT,
            Notice::Error(format!(
                "{} ({state})",
                lang.t(
                    "既に処理されています。ページを開き直して確認してください。",
                    "Already done. Reload the page to see its state."
                )
            )),
        ),
        e @ (E::Invalid { .. } | E::UnknownReference { .. }) => (
            StatusCode::BAD_REQUEST,
            Notice::Error(format!(
                "{} ({e})",
                lang.t("入力が正しくありません。", "The input is not valid.")
            )),
        ),
        e => {
            tracing::error!(error = %format!("{e:#}"), "Portal store write failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Notice::Error(
                    lang.t(
                        "内部エラーが発生しました。変更は保存されていません。",
                        "An internal error occurred. Nothing was changed.",
                    )
                    .into(),
                ),
            )
        }
    }
}

/// The reason input every change form carries.
pub(super) fn reason_input(lang: Lang, id: &str, required: bool) -> String {
    format!(
        r#"<label for="{id}">{label}</label><input id="{id}" name="reason" type="text" maxlength="{MAX_REASON_CHARS}"{req} placeholder="{ph}">"#,
        label = if required {
            lang.t(
                "理由（必須・監査ログに記録）",
                "Reason (required, kept in the audit log)",
            )
        } else {
            lang.t(
                "理由（任意・監査ログに記録）",
                "Reason (optional, kept in the audit log)",
            )
        },
        req = if required { " required" } else { "" },
        ph = lang.t(
            "例: 情報セキュリティ委員会の決定",
            "e.g. decided by the security committee"
        ),
    )
}

/// The hidden CSRF field.
pub(super) fn csrf_input(v: &Visitor) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(&v.csrf)
    )
}

/// "Signed in as …" with a sign-out button.
pub(super) fn who_line(lang: Lang, v: &Visitor) -> String {
    let roles: Vec<&str> = v.user.roles.iter().map(|r| r.as_str()).collect();
    format!(
        r#"<div class="who-line"><span>{} <strong>{}</strong> {} <span class="muted">({} · {} · {})</span></span>
<form method="post" action="/me/logout{}" class="inline">{}<button type="submit" class="secondary small">{}</button></form></div>"#,
        lang.t("ログイン中:", "Signed in:"),
        esc(&v.user.name),
        lang.t("さん", ""),
        esc(&v.user.id),
        esc(&v.user.department),
        esc(&roles.join(", ")),
        lang.query(),
        csrf_input(v),
        lang.t("ログアウト", "Sign out"),
    )
}

/// The top of an officer page: who is signed in, the menu with `path` as the
/// current tab, the notice of the last action, and the page's lead paragraph.
fn officer_head(
    lang: Lang,
    v: &Visitor,
    path: &str,
    notice: Option<&Notice>,
    lead: &str,
) -> String {
    let mut out = String::from(r#"<div class="officer-wide">"#);
    out.push_str(&who_line(lang, v));
    out.push_str(&nav(lang, path));
    if let Some(n) = notice {
        out.push_str(&n.html());
    }
    let _ = write!(out, r#"<p class="lead">{lead}</p>"#);
    out
}

/// The officer pages' tabs.
fn nav(lang: Lang, current: &str) -> String {
    let tabs = [
        ("/officer/rules", "ルール", "Rules"),
        ("/officer/desks", "デスク", "Desks"),
        ("/officer/devices", "端末", "Devices"),
        ("/officer/bcp", "BCP", "BCP"),
        ("/plans", "テレワーク計画", "Telework plans"),
    ];
    let mut out = format!(
        r#"<nav class="tabs" aria-label="{}">"#,
        lang.t("情報セキュリティ担当のメニュー", "Security officer menu")
    );
    for (path, ja, en) in tabs {
        let cur = if path == current {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r#"<a href="{path}{}"{cur}>{}</a>"#,
            lang.query(),
            lang.t(ja, en)
        );
    }
    out.push_str("</nav>");
    out
}

impl PortalState {
    /// The configured local UTC offset (`[identity] utc_offset_secs`).
    pub(super) fn offset(&self) -> UtcOffset {
        UtcOffset::from_whole_seconds(self.inner.utc_offset_secs).unwrap_or(UtcOffset::UTC)
    }

    /// Now, in local time.
    pub(super) fn local_now(&self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(self.now())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .to_offset(self.offset())
    }
}

/// `YYYY-MM-DD` as a date.
pub(super) fn parse_date(s: &str) -> Option<Date> {
    let mut it = s.trim().splitn(3, '-');
    let (y, m, d) = (it.next()?, it.next()?, it.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let month = Month::try_from(m.parse::<u8>().ok()?).ok()?;
    Date::from_calendar_date(y.parse().ok()?, month, d.parse().ok()?).ok()
}

/// `HH:MM` as minutes after midnight (`24:00` allowed).
pub(super) fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.trim().split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
}

/// Minutes after midnight as `HH:MM`.
pub(super) fn hhmm(min: u16) -> String {
    format!("{:02}:{:02}", min / 60, min % 60)
}

/// `YYYY-MM-DD`.
pub(super) fn ymd(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// A local date and time at `offset`.
fn local_instant(date: &str, time: &str, offset: UtcOffset) -> Option<OffsetDateTime> {
    let d = parse_date(date)?;
    let min = parse_hhmm(time)?;
    if min >= 1440 {
        return None;
    }
    let t = time::Time::from_hms((min / 60) as u8, (min % 60) as u8, 0).ok()?;
    Some(d.with_time(t).assume_offset(offset))
}

// ------------------------------------------------------------ rules

/// `GET /officer`
pub(crate) async fn home(RawQuery(q): RawQuery) -> Response {
    let lang = Lang::from_query(q.as_deref());
    see_other(&link("/officer/rules", lang, &[]))
}

/// The what-if request the officer sets on the rules page.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct WhatIf {
    level: String,
    class: String,
    segment: String,
    /// Local date `YYYY-MM-DD`, in the policy's timezone.
    date: String,
    /// Local time `HH:MM`.
    time: String,
    /// `approved` or `none`.
    plan: String,
    bcp: bool,
    dept: String,
    /// Minutes since the multi-factor login.
    mfa_age: Option<u64>,
}

impl Default for WhatIf {
    fn default() -> Self {
        WhatIf {
            level: "2".into(),
            class: "home".into(),
            segment: "lgwan".into(),
            date: String::new(),
            time: "10:00".into(),
            plan: "approved".into(),
            bcp: false,
            dept: String::new(),
            mfa_age: Some(0),
        }
    }
}

/// `POST /officer/rules/preview` body.
#[derive(Debug, Deserialize)]
pub(crate) struct PreviewRequest {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    text: String,
    #[serde(flatten)]
    what_if: WhatIf,
}

/// Diagnostics of `text` and, when it parses, the decision for `w` with
/// every step: what the rules page shows as the officer types. Pure.
pub(crate) fn preview(text: &str, w: &WhatIf) -> Value {
    let text = text.replace("\r\n", "\n");
    let diags = pol::check(&text);
    let errors = diags
        .iter()
        .filter(|d| d.severity == pol::Severity::Error)
        .count();
    let mut out = json!({
        "diagnostics": diags,
        "errors": errors,
        "warnings": diags.len() - errors,
        "rules": null,
        "at": null,
        "decision": null,
        "steps": [],
        "what_if_error": null,
    });
    let policy = match pol::Policy::from_toml(&text) {
        Ok(p) => p,
        Err(_) => return out,
    };
    out["rules"] = policy.rules.len().into();
    let args = match what_if_args(w) {
        Ok(a) => a,
        Err(e) => {
            out["what_if_error"] = e.into();
            return out;
        }
    };
    let Some(at) = local_instant(&w.date, &w.time, policy.timezone) else {
        out["what_if_error"] = "date and time: expected YYYY-MM-DD and HH:MM".into();
        return out;
    };
    out["at"] = at.format(&Rfc3339).unwrap_or_default().into();
    let req = pol::what_if_request(&args, &policy, at);
    let ex = pol::explain(&req, &policy, at);
    let local = |unix: u64| {
        i64::try_from(unix)
            .ok()
            .and_then(|u| OffsetDateTime::from_unix_timestamp(u).ok())
            .map(|t| t.to_offset(policy.timezone))
            .map(|t| format!("{} {:02}:{:02}", ymd(t.date()), t.hour(), t.minute()))
    };
    out["decision"] = match ex.decision.allowed() {
        Some((rule, controls, limits)) => json!({
            "allow": true,
            "reason": null,
            "ja": null,
            "en": null,
            "rule": rule,
            "controls": controls,
            "limits": limits,
            "end_at_local": limits.end_at.and_then(local),
        }),
        None => {
            let reason = ex.decision.reason();
            json!({
                "allow": false,
                "reason": reason.map(|r| r.code()),
                "ja": reason.map(|r| r.ja()),
                "en": reason.map(|r| r.en()),
                "rule": ex.decision.rule(),
                "controls": null,
                "limits": null,
                "end_at_local": null,
            })
        }
    };
    out["steps"] = serde_json::to_value(&ex.steps).unwrap_or_default();
    out
}

fn what_if_args(w: &WhatIf) -> Result<pol::ExplainArgs, String> {
    let dept = w.dept.trim();
    Ok(pol::ExplainArgs {
        policy_text: String::new(),
        level: w.level.trim().parse()?,
        class: w.class.trim().parse()?,
        segment: w.segment.trim().parse()?,
        at: String::new(),
        plan: w.plan.trim().parse()?,
        bcp: w.bcp,
        dept: (!dept.is_empty()).then(|| dept.to_owned()),
        mfa_age_mins: w.mfa_age,
        json: true,
    })
}

/// `POST /officer/rules/preview`
pub(crate) async fn rules_preview(
    State(s): State<PortalState>,
    headers: HeaderMap,
    body: Result<Json<PreviewRequest>, JsonRejection>,
) -> Response {
    let Ok(Json(req)) = body else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "error": "bad_request",
                "message_ja": "入力の形式が正しくありません。",
                "message_en": "The request is malformed.",
            })),
        )
            .into_response();
    };
    if let Err(r) = s.poster(&headers, Need::Officer, &req.csrf).await {
        return r.json();
    }
    Json(preview(&req.text, &req.what_if)).into_response()
}

/// `GET /officer/rules`
pub(crate) async fn rules(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let title = lang.t("ルール（アクセスポリシー）", "Rules (access policy)");
    let v = match s.visitor(&headers, Need::Officer).await {
        Ok(v) => v,
        Err(r) => return get_refused(r, lang, "/officer/rules", q.as_deref(), title),
    };
    let mut notice = query_param(q.as_deref(), "saved").map(|n| {
        Notice::Ok(format!(
            "{} {n} {}",
            lang.t("バージョン", "Version"),
            lang.t(
                "を保存し、適用しました。接続中のセッションは新しいルールで1秒以内に再判定されます。",
                "is saved and in force. Live sessions are re-decided under the new rules within a second."
            )
        ))
    });
    let mut text = None;
    if let Some(n) = query_param(q.as_deref(), "version").and_then(|n| n.parse::<i64>().ok()) {
        match s.store().policy_version(n).await {
            Ok(Some(d)) => {
                notice = Some(Notice::Ok(format!(
                    "{} {n} {}",
                    lang.t("バージョン", "Version"),
                    lang.t(
                        "の内容を編集欄に読み込みました（まだ適用されていません）。保存すると新しいバージョンとして適用されます。",
                        "is loaded into the editor (not in force). Saving puts it in force as a new version."
                    )
                )));
                text = Some(d.text);
            }
            Ok(None) => {
                notice = Some(Notice::Error(
                    lang.t("そのバージョンはありません。", "No such version.")
                        .into(),
                ))
            }
            Err(e) => return Refused::from(e).page(lang, "/officer/rules", q.as_deref()),
        }
    }
    rules_page(&s, &v, lang, q.as_deref(), text, notice, StatusCode::OK).await
}

async fn rules_page(
    s: &PortalState,
    v: &Visitor,
    lang: Lang,
    q: Option<&str>,
    text: Option<String>,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    match rules_body(s, v, lang, text, notice).await {
        Ok(body) => html(
            status,
            page(
                lang,
                lang.t("ルール（アクセスポリシー）", "Rules (access policy)"),
                &switch_link("/officer/rules", q, lang),
                &body,
            ),
        ),
        Err(e) => Refused::from(e).page(lang, "/officer/rules", q),
    }
}

async fn rules_body(
    s: &PortalState,
    v: &Visitor,
    lang: Lang,
    text: Option<String>,
    notice: Option<Notice>,
) -> kakehashi_store::Result<String> {
    let store = s.store();
    let current = store.current_policy().await?;
    let base_version = current.as_ref().map_or(0, |d| d.version);
    let text = text.unwrap_or_else(|| {
        current
            .as_ref()
            .map_or_else(|| pol::default_policy_toml().to_owned(), |d| d.text.clone())
    });
    let mut out = officer_head(
        lang,
        v,
        "/officer/rules",
        notice.as_ref(),
        lang.t(
            "接続の可否を決めるルールを TOML で編集します。右側で仮定の接続を設定すると、編集中の内容での判定がその場で表示されます。保存すると検証のうえ新しいバージョンとして適用され、監査ログに記録されます。",
            "Edit the rules that decide every connection, as TOML. Set a hypothetical connection on the right to see how the text being edited decides it. Saving validates the text, puts it in force as a new version and records it in the audit log."
        ),
    );
    match &current {
        Some(d) => {
            let _ = write!(
                out,
                r#"<p id="current-version" data-version="{ver}">{l} <strong>{vl} {ver}</strong>（{at}、{by}）</p>"#,
                l = lang.t("適用中:", "In force:"),
                vl = lang.t("バージョン", "version"),
                ver = d.version,
                at = s.local_time(d.created),
                by = esc(&d.author),
            );
        }
        None => {
            let _ = write!(
                out,
                r#"<p id="current-version" data-version="0">{}</p>"#,
                lang.t(
                    "まだ保存されたポリシーはありません（既定のポリシーを表示しています）。",
                    "No policy saved yet (showing the shipped default)."
                )
            );
        }
    }

    // The editor (the save form) and the preview side by side.
    let today = s.local_now().date();
    let wi = WhatIf {
        date: ymd(today),
        ..WhatIf::default()
    };
    let msg = |k: &str, ja: &'static str, en: &'static str| {
        format!(r#" data-msg-{k}="{}""#, esc(lang.t(ja, en)))
    };
    let msgs = [
        msg("checking", "確認中…", "Checking…"),
        msg(
            "failed",
            "プレビューを取得できませんでした。",
            "The preview is unavailable.",
        ),
        msg("noerrors", "エラーなし", "No errors"),
        msg("rules", "ルール数", "rules"),
        msg("error", "エラー", "error"),
        msg("warning", "警告", "warning"),
        msg("line", "行", "line"),
        msg("col", "列", "col"),
        msg("allow", "許可", "ALLOW"),
        msg("deny", "拒否", "DENY"),
        msg("rule", "決定したルール", "Deciding rule"),
        msg("norule", "（なし）", "(none)"),
        msg("reason", "理由コード", "Reason code"),
        msg("controls", "セッション制御", "Session controls"),
        msg("limits", "制限", "Limits"),
        msg("endat", "終了時刻", "Ends at"),
        msg("maxdur", "最大接続時間", "Max duration"),
        msg("idle", "無操作タイムアウト", "Idle timeout"),
        msg("mfa", "認証の有効期間", "MFA max age"),
        msg("stepup", "再認証（ステップアップ）", "Step-up"),
        msg("required", "必要", "required"),
        msg("notrequired", "不要", "not required"),
        msg("min", "分", "min"),
        msg("yes", "可", "yes"),
        msg("no", "不可", "no"),
        msg("none", "なし", "none"),
        msg("at", "判定時刻", "At"),
        msg("steps", "評価の過程", "Evaluation steps"),
        msg(
            "invalid",
            "ポリシーにエラーがあるため判定できません。",
            "The policy has errors: no decision.",
        ),
        msg(
            "whatif",
            "仮定の接続の入力が正しくありません",
            "The hypothetical connection is not valid",
        ),
        msg("clipboard", "クリップボード", "clipboard"),
        msg("drive", "ドライブ", "drive"),
        msg("printer", "プリンター", "printer"),
        msg("ports", "ポート", "ports"),
        msg("usb", "USB", "USB"),
        msg("audio", "音声", "audio"),
        msg("smartcard", "スマートカード", "smartcard"),
    ]
    .concat();
    let _ = write!(
        out,
        r#"<div class="rules-grid">
<form id="rules-editor" class="card" method="post" action="{action}" data-preview="/officer/rules/preview" data-lang="{code}" data-csrf="{csrf}"{msgs}>
{csrf_input}<input type="hidden" name="base_version" value="{base_version}">
<label for="policy-text">{text_l}</label>
<textarea id="policy-text" name="text" rows="32" spellcheck="false" autocapitalize="off" autocomplete="off" wrap="off">{text}</textarea>
{reason}
<button type="submit" id="save">{save}</button>
<p class="field-hint">{save_h}</p>
</form>
<section class="card preview" aria-labelledby="preview-h">
<h2 id="preview-h">{pv_h}</h2>
<div class="whatif">
<label for="wi-level">{level_l}</label><select id="wi-level">{levels}</select>
<label for="wi-class">{class_l}</label><select id="wi-class">{classes}</select>
<label for="wi-segment">{segment_l}</label><select id="wi-segment">{segments}</select>
<label for="wi-date">{date_l}</label><input id="wi-date" type="date" value="{date}">
<label for="wi-time">{time_l}</label><input id="wi-time" type="time" value="{time}">
<label for="wi-plan">{plan_l}</label><select id="wi-plan">{plans}</select>
<label for="wi-bcp">{bcp_l}</label><span><input id="wi-bcp" type="checkbox"> <span class="muted">{bcp_h}</span></span>
<label for="wi-dept">{dept_l}</label><input id="wi-dept" type="text" maxlength="128" placeholder="{dept_ph}">
<label for="wi-mfa">{mfa_l}</label><input id="wi-mfa" type="number" min="0" max="100000" value="0">
</div>
<p class="field-hint">{assume}</p>
<div id="preview-status" class="muted" role="status" aria-live="polite"></div>
<div id="preview-decision" data-allow="" aria-live="polite"></div>
<div id="preview-diags"></div>
<details id="preview-steps-box"><summary>{steps_l}</summary><table id="preview-steps"><tbody></tbody></table></details>
</section>
</div>
<script src="/assets/officer.js" defer></script>"#,
        action = link("/officer/rules", lang, &[]),
        code = lang.code(),
        csrf = esc(&v.csrf),
        csrf_input = csrf_input(v),
        text_l = lang.t("ポリシー（TOML）", "Policy (TOML)"),
        text = esc(&text),
        reason = reason_input(lang, "reason", true),
        save = lang.t("検証して保存・適用", "Validate, save and put in force"),
        save_h = lang.t(
            "保存すると、接続中のセッションも新しいルールで再判定され、許可されなくなったセッションは終了します。",
            "Saving re-decides live sessions too: those the new rules no longer allow are ended."
        ),
        pv_h = lang.t("判定のプレビュー（仮定の接続）", "Preview: a hypothetical connection"),
        level_l = lang.t("機密性レベル", "Confidentiality level"),
        levels = options(&[("1", "1"), ("2", "2"), ("3", "3")], &wi.level),
        class_l = lang.t("端末区分", "Terminal class"),
        classes = options(
            &[
                ("home", lang.t("在宅", "home")),
                ("mobile", lang.t("モバイル", "mobile")),
                ("satellite", lang.t("サテライトオフィス", "satellite office")),
            ],
            &wi.class
        ),
        segment_l = lang.t("ネットワーク", "Segment"),
        segments = options(
            &[
                ("lgwan", lang.t("LGWAN接続系", "LGWAN")),
                ("internet", lang.t("インターネット接続系", "internet")),
                ("mynumber", lang.t("個人番号利用事務系", "My Number")),
            ],
            &wi.segment
        ),
        date_l = lang.t("日付", "Date"),
        date = wi.date,
        time_l = lang.t("時刻", "Time"),
        time = wi.time,
        plan_l = lang.t("テレワーク計画", "Telework plan"),
        plans = options(
            &[
                ("approved", lang.t("承認済み", "approved")),
                ("none", lang.t("なし", "none")),
            ],
            &wi.plan
        ),
        bcp_l = lang.t("BCP宣言", "BCP declared"),
        bcp_h = lang.t("全職員、既定の緩和内容", "everyone, the default relaxation"),
        dept_l = lang.t("所属（任意）", "Department (optional)"),
        dept_ph = lang.t("例: 税務課", "e.g. 税務課"),
        mfa_l = lang.t("認証からの経過（分）", "Minutes since sign-in"),
        assume = lang.t(
            "仮定: 本人はデスクの利用者、端末は利用可、必要なら再認証済み。時刻はポリシーの timezone で解釈します。",
            "Assumed: the person owns the desk, the device is active, a step-up is made when asked. The time is read in the policy's timezone."
        ),
        steps_l = lang.t("評価の過程", "Evaluation steps"),
    );

    // History.
    let _ = write!(out, r#"<h2>{}</h2>"#, lang.t("保存履歴", "History"));
    match &current {
        None => {
            let _ = write!(
                out,
                r#"<p class="muted">{}</p>"#,
                lang.t("履歴はありません。", "No versions yet.")
            );
        }
        Some(cur) => {
            let _ = write!(
                out,
                r#"<table id="history"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th></th></tr></thead><tbody>"#,
                lang.t("バージョン", "Version"),
                lang.t("保存日時", "Saved"),
                lang.t("保存者", "By"),
            );
            let oldest = (cur.version - HISTORY + 1).max(1);
            for n in (oldest..=cur.version).rev() {
                let Some(d) = store.policy_version(n).await? else {
                    continue;
                };
                let action = if n == cur.version {
                    lang.t("適用中", "in force").to_owned()
                } else {
                    format!(
                        r#"<a href="{}">{}</a>"#,
                        esc(&link(
                            "/officer/rules",
                            lang,
                            &[("version", &n.to_string())]
                        )),
                        lang.t("編集欄に読み込む", "Load into the editor")
                    )
                };
                let _ = write!(
                    out,
                    r#"<tr data-version="{n}"><td>{n}</td><td>{}</td><td>{}</td><td>{action}</td></tr>"#,
                    s.local_time(d.created),
                    esc(&d.author),
                );
            }
            out.push_str("</tbody></table>");
            let _ = write!(
                out,
                r#"<p class="field-hint">{}</p>"#,
                lang.t(
                    "変更の理由は監査ログ（kakehashi-gateway audit export）に記録されています。",
                    "The reasons are in the audit log (kakehashi-gateway audit export)."
                )
            );
        }
    }
    out.push_str("</div>");
    Ok(out)
}

/// `<option>`s with `selected` on `cur`.
fn options(list: &[(&str, &str)], cur: &str) -> String {
    list.iter()
        .map(|(v, label)| {
            let sel = if *v == cur { " selected" } else { "" };
            format!(r#"<option value="{}"{sel}>{}</option>"#, esc(v), esc(label))
        })
        .collect()
}

/// `POST /officer/rules` form.
#[derive(Debug, Deserialize)]
pub(crate) struct SaveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    base_version: i64,
    #[serde(default)]
    text: String,
    #[serde(default)]
    reason: String,
}

/// `POST /officer/rules`: validate as `policy import` does, then put in force.
pub(crate) async fn rules_save(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<SaveForm>, FormRejection>,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let path = "/officer/rules";
    let (v, f) = match s
        .accept_form(&headers, Need::Officer, form, (lang, path, q.as_deref()))
        .await
    {
        Ok(x) => x,
        Err(page) => return page,
    };
    // Browsers send a textarea's line ends as CRLF.
    let text = f.text.replace("\r\n", "\n");
    let again = |notice: Notice, status: StatusCode, text: String| {
        let (s, v, q) = (s.clone(), v.clone(), q.clone());
        async move { rules_page(&s, &v, lang, q.as_deref(), Some(text), Some(notice), status).await }
    };
    let reason = match check_reason(lang, &f.reason, true) {
        Ok(r) => r,
        Err(n) => return again(n, StatusCode::BAD_REQUEST, text).await,
    };
    let policy = match kakehashi_relay::admission::parse_policy(&text) {
        Ok(p) => p,
        Err(e) => {
            let n = Notice::Error(format!(
                "{}\n{e:#}",
                lang.t(
                    "ポリシーにエラーがあるため保存していません。",
                    "The policy has errors, so it was not saved."
                )
            ));
            return again(n, StatusCode::UNPROCESSABLE_ENTITY, text).await;
        }
    };
    let current = match s.store().current_policy().await {
        Ok(c) => c,
        Err(e) => return Refused::from(e).page(lang, path, q.as_deref()),
    };
    let current_version = current.as_ref().map_or(0, |d| d.version);
    if current_version != f.base_version {
        let n = Notice::Error(format!(
            "{} {current_version} {}",
            lang.t(
                "編集を始めた後に、ほかの担当者がバージョン",
                "Since you started editing, someone else saved version"
            ),
            lang.t(
                "を保存しました。保存していません。内容を見比べてから保存し直してください（編集中の内容は下に残っています）。",
                ". Nothing was saved: compare, then save again (your text is kept below)."
            )
        ));
        return again(n, StatusCode::CONFLICT, text).await;
    }
    if current.as_ref().is_some_and(|d| d.text == text) {
        let n = Notice::Error(
            lang.t(
                "適用中のポリシーと同じ内容のため、保存していません。",
                "The text is the same as the policy in force: nothing was saved.",
            )
            .into(),
        );
        return again(n, StatusCode::OK, text).await;
    }
    let audit = Audit::new(s.now(), v.actor(), "policy.import")
        .subject("policy")
        .reason(&reason)
        .detail(json!({
            "via": "portal",
            "rules": policy.rules.len(),
            "base_version": f.base_version,
            "source": ip.to_string(),
        }));
    match s.store().put_policy(&text, audit).await {
        Ok(doc) => {
            info!(user = %v.user.id, version = doc.version, rules = policy.rules.len(), "Policy saved from the portal");
            see_other(&link(path, lang, &[("saved", &doc.version.to_string())]))
        }
        Err(e) => {
            let (status, n) = write_failed(lang, e);
            again(n, status, text).await
        }
    }
}

// ------------------------------------------------------------ desks

/// `GET /officer/desks`
pub(crate) async fn desks(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let title = lang.t("デスク（機密性レベル）", "Desks (confidentiality levels)");
    match s.visitor(&headers, Need::Officer).await {
        Ok(v) => {
            let notice = done_notice(lang, q.as_deref());
            desks_page(&s, &v, lang, q.as_deref(), notice, StatusCode::OK).await
        }
        Err(r) => get_refused(r, lang, "/officer/desks", q.as_deref(), title),
    }
}

/// The notice for `?done=ACTION&id=ID` after a change.
fn done_notice(lang: Lang, q: Option<&str>) -> Option<Notice> {
    let done = query_param(q, "done")?;
    let id = query_param(q, "id").unwrap_or_default();
    let n = query_param(q, "n").unwrap_or_default();
    let text = match done.as_str() {
        "desk.set" => format!(
            "{id} {}",
            lang.t(
                "を変更しました。接続中のセッションは1秒以内に再判定されます。",
                "changed. Live sessions are re-decided within a second."
            )
        ),
        "device.block" => format!(
            "{id} {} {n} {}",
            lang.t(
                "を利用停止にしました。接続中のセッションは1秒以内に終了します。ログイン",
                "is blocked; its live sessions end within a second. Login tokens revoked:"
            ),
            lang.t("件を失効させました。", "")
        ),
        "user.unlock" => format!(
            "{id} {}",
            lang.t("のロックを解除しました。", "is unlocked.")
        ),
        "device.unblock" => format!(
            "{id} {}",
            lang.t(
                "の利用を再開しました（利用者は再ログインが必要です）。",
                "is active again (its user must sign in again)."
            )
        ),
        "bcp.declare" => lang
            .t(
                "BCPモードを宣言しました。全ページにお知らせが表示されます。",
                "BCP mode declared. Every page shows the banner.",
            )
            .to_owned(),
        "bcp.end" => format!(
            "{id} {}",
            lang.t(
                "を終了しました。緩和で許可されていたセッションは1秒以内に再判定されます。",
                "ended. Sessions it allowed are re-decided within a second."
            )
        ),
        _ => return None,
    };
    Some(Notice::Ok(text))
}

async fn desks_page(
    s: &PortalState,
    v: &Visitor,
    lang: Lang,
    q: Option<&str>,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let title = lang.t("デスク（機密性レベル）", "Desks (confidentiality levels)");
    let desks = match s.store().list_desks().await {
        Ok(d) => d,
        Err(e) => return Refused::from(e).page(lang, "/officer/desks", q),
    };
    let mut out = officer_head(
        lang,
        v,
        "/officer/desks",
        notice.as_ref(),
        lang.t(
            "接続先のデスクPCごとの機密性レベルとネットワークです。変更すると、接続中のセッションも1秒以内に再判定されます。個人番号利用事務系のデスクには、どのルールでも接続できません。種別「RDP以外」のデスクへの接続では利用制限が強制されず、監査ログにそのように記録されます。",
            "Each desk PC's confidentiality level and network segment. A change re-decides live sessions within a second. Desks in the My Number segment are never reachable, whatever the rules. Sessions to a desk of service \"not RDP\" are admitted without enforcing their controls, and audited so."
        ),
    );
    if desks.is_empty() {
        let _ = write!(
            out,
            r#"<p class="muted">{}</p>"#,
            lang.t(
                "登録されたデスクはありません（kakehashi-gateway admin desk add で登録します）。",
                "No desks yet (register them with kakehashi-gateway admin desk add)."
            )
        );
    } else {
        let _ = write!(
            out,
            r#"<table id="desks"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>"#,
            lang.t("デスク", "Desk"),
            lang.t("レベル", "Level"),
            lang.t("ネットワーク", "Segment"),
            lang.t("種別", "Service"),
            lang.t("所属", "Department"),
            lang.t("利用者", "Owners"),
            lang.t("変更", "Change"),
        );
        for d in &desks {
            let owners: Vec<&str> = d.owners.iter().map(String::as_str).collect();
            let fid = format!("desk-{}", d.id);
            let _ = write!(
                out,
                r#"<tr data-desk="{id}" data-service="{service}"><td>{id}</td><td class="level-{lv}">{lv}</td><td>{seg}</td><td>{service_name}</td><td>{dept}</td><td>{owners}</td><td>
<form method="post" action="{action}" class="row-form">{csrf}<input type="hidden" name="id" value="{id}">
<select name="level" aria-label="{level_l}">{levels}</select>
<select name="segment" aria-label="{seg_l}">{segs}</select>
<select name="service" aria-label="{service_l}">{services}</select>
<input name="reason" type="text" required maxlength="{MAX_REASON_CHARS}" aria-label="{reason_l}" placeholder="{reason_l}" id="{fid}-reason">
<button type="submit" class="small">{submit}</button></form></td></tr>"#,
                id = esc(&d.id),
                lv = d.level,
                seg = segment_name(lang, d.segment),
                service = d.service.as_str(),
                service_name = service_name(lang, d.service),
                dept = esc(&d.department),
                owners = esc(&owners.join(", ")),
                action = link("/officer/desks", lang, &[]),
                csrf = csrf_input(v),
                level_l = lang.t("機密性レベル", "Confidentiality level"),
                levels = options(&[("1", "1"), ("2", "2"), ("3", "3")], &d.level.to_string()),
                seg_l = lang.t("ネットワーク", "Segment"),
                segs = options(
                    &[
                        ("lgwan", lang.t("LGWAN接続系", "LGWAN")),
                        ("internet", lang.t("インターネット接続系", "internet")),
                        ("mynumber", lang.t("個人番号利用事務系", "My Number")),
                    ],
                    d.segment.as_str()
                ),
                service_l = lang.t("種別", "Service"),
                services = options(
                    &[
                        ("rdp", service_name(lang, DeskService::Rdp)),
                        ("other", service_name(lang, DeskService::Other)),
                    ],
                    d.service.as_str()
                ),
                reason_l = lang.t("理由（必須）", "Reason (required)"),
                submit = lang.t("変更", "Change"),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</div>");
    html(
        status,
        page(lang, title, &switch_link("/officer/desks", q, lang), &out),
    )
}

fn service_name(lang: Lang, s: DeskService) -> &'static str {
    match s {
        DeskService::Rdp => lang.t("RDP（利用制限を強制）", "RDP (controls enforced)"),
        _ => lang.t(
            "RDP以外（制限は強制されない）",
            "not RDP (controls not enforced)",
        ),
    }
}

fn segment_name(lang: Lang, s: Segment) -> &'static str {
    match s {
        Segment::Lgwan => lang.t("LGWAN接続系", "LGWAN"),
        Segment::Internet => lang.t("インターネット接続系", "internet"),
        Segment::Mynumber => lang.t("個人番号利用事務系", "My Number"),
        _ => lang.t("その他", "other"),
    }
}

/// `POST /officer/desks` form.
#[derive(Debug, Deserialize)]
pub(crate) struct DeskForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    level: String,
    #[serde(default)]
    segment: String,
    /// `rdp` or `other`; absent: unchanged.
    #[serde(default)]
    service: String,
    #[serde(default)]
    reason: String,
}

/// `POST /officer/desks`: change a desk's level, segment and service (`desk.set`).
pub(crate) async fn desks_set(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<DeskForm>, FormRejection>,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let path = "/officer/desks";
    let (v, f) = match s
        .accept_form(&headers, Need::Officer, form, (lang, path, q.as_deref()))
        .await
    {
        Ok(x) => x,
        Err(page) => return page,
    };
    let fail = |n: Notice, status: StatusCode| {
        let (s, v, q) = (s.clone(), v.clone(), q.clone());
        async move { desks_page(&s, &v, lang, q.as_deref(), Some(n), status).await }
    };
    let reason = match check_reason(lang, &f.reason, true) {
        Ok(r) => r,
        Err(n) => return fail(n, StatusCode::BAD_REQUEST).await,
    };
    // The CLI's checks: level 1..=3, a known segment.
    let level = match f.level.trim().parse::<u8>() {
        Ok(l) if (1..=3).contains(&l) => l,
        _ => {
            let n = Notice::Error(
                lang.t(
                    "機密性レベルは 1、2、3 のいずれかです。",
                    "The level must be 1, 2 or 3.",
                )
                .into(),
            );
            return fail(n, StatusCode::BAD_REQUEST).await;
        }
    };
    let Ok(segment) = f.segment.trim().parse::<Segment>() else {
        let n = Notice::Error(
            lang.t(
                "ネットワークは lgwan、internet、mynumber のいずれかです。",
                "The segment must be lgwan, internet or mynumber.",
            )
            .into(),
        );
        return fail(n, StatusCode::BAD_REQUEST).await;
    };
    let service = match f.service.trim() {
        "" => None,
        v => match v.parse::<DeskService>() {
            Ok(v) => Some(v),
            Err(_) => {
                let n = Notice::Error(
                    lang.t(
                        "種別は rdp、other のいずれかです。",
                        "The service must be rdp or other.",
                    )
                    .into(),
                );
                return fail(n, StatusCode::BAD_REQUEST).await;
            }
        },
    };
    let mut d = match s.store().get_desk(f.id.trim()).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            let (st, n) = write_failed(lang, kakehashi_store::Error::NotFound { what: "desk" });
            return fail(n, st).await;
        }
        Err(e) => return Refused::from(e).page(lang, path, q.as_deref()),
    };
    let service = service.unwrap_or(d.service);
    if d.level == level && d.segment == segment && d.service == service {
        let n = Notice::Error(lang.t("変更がありません。", "Nothing to change.").into());
        return fail(n, StatusCode::OK).await;
    }
    let before = json!(d);
    d.level = level;
    d.segment = segment;
    d.service = service;
    let audit = Audit::new(s.now(), v.actor(), "desk.set")
        .subject(&d.id)
        .reason(&reason)
        .detail(json!({ "before": before, "after": d, "via": "portal", "source": ip.to_string() }));
    match s.store().set_desk(&d, audit).await {
        Ok(()) => {
            info!(user = %v.user.id, desk = %d.id, level, segment = %segment, service = %service, "Desk changed from the portal");
            see_other(&link(path, lang, &[("done", "desk.set"), ("id", &d.id)]))
        }
        Err(e) => {
            let (st, n) = write_failed(lang, e);
            fail(n, st).await
        }
    }
}

// ------------------------------------------------------------ devices

/// `GET /officer/devices`
pub(crate) async fn devices(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let title = lang.t("端末（利用停止）", "Devices (block)");
    match s.visitor(&headers, Need::Officer).await {
        Ok(v) => {
            let notice = done_notice(lang, q.as_deref());
            devices_page(&s, &v, lang, q.as_deref(), notice, StatusCode::OK).await
        }
        Err(r) => get_refused(r, lang, "/officer/devices", q.as_deref(), title),
    }
}

async fn devices_page(
    s: &PortalState,
    v: &Visitor,
    lang: Lang,
    q: Option<&str>,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let title = lang.t("端末（利用停止）", "Devices (block)");
    let list = match s.store().list_devices().await {
        Ok(d) => d,
        Err(e) => return Refused::from(e).page(lang, "/officer/devices", q),
    };
    let mut out = officer_head(
        lang,
        v,
        "/officer/devices",
        notice.as_ref(),
        lang.t(
            "貸与端末の一覧です。利用停止にすると、その端末のログインはすべて失効し、接続中のセッションは1秒以内に終了します。紛失・盗難のときは、証明書の失効（kakehashi-pki revoke）も行ってください。",
            "The loaned devices. Blocking one revokes all its logins and ends its live sessions within a second. For a lost or stolen device, also revoke its certificate (kakehashi-pki revoke)."
        ),
    );
    if list.is_empty() {
        let _ = write!(
            out,
            r#"<p class="muted">{}</p>"#,
            lang.t(
                "登録された端末はありません（初回ログイン時に登録されます）。",
                "No devices yet (a device registers at its first login)."
            )
        );
    } else {
        let _ = write!(
            out,
            r#"<table id="devices"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>"#,
            lang.t("端末", "Device"),
            lang.t("区分", "Class"),
            lang.t("状態", "Status"),
            lang.t("貸与先", "Loaned to"),
            lang.t("操作", "Action"),
        );
        let action_block = link("/officer/devices/block", lang, &[]);
        let action_unblock = link("/officer/devices/unblock", lang, &[]);
        for d in &list {
            let action = match d.status {
                DeviceStatus::Active => format!(
                    r#"<form method="post" action="{action_block}" class="row-form">{csrf}<input type="hidden" name="id" value="{id}">
<select name="status" aria-label="{st_l}">{sts}</select>
<input name="reason" type="text" required maxlength="{MAX_REASON_CHARS}" aria-label="{reason_l}" placeholder="{reason_l}">
<button type="submit" class="danger">{submit}</button></form>"#,
                    csrf = csrf_input(v),
                    id = esc(&d.id),
                    st_l = lang.t("状態", "Status"),
                    sts = options(
                        &[
                            ("blocked", lang.t("利用停止", "blocked")),
                            ("lost", lang.t("紛失届出", "reported lost")),
                        ],
                        "blocked"
                    ),
                    reason_l = lang.t("理由（必須）", "Reason (required)"),
                    submit = lang.t("利用停止", "Block"),
                ),
                DeviceStatus::Blocked | DeviceStatus::Lost => format!(
                    r#"<form method="post" action="{action_unblock}" class="row-form">{csrf}<input type="hidden" name="id" value="{id}">
<input name="reason" type="text" required maxlength="{MAX_REASON_CHARS}" aria-label="{reason_l}" placeholder="{reason_l}">
<button type="submit" class="small">{submit}</button></form>"#,
                    csrf = csrf_input(v),
                    id = esc(&d.id),
                    reason_l = lang.t("理由（必須）", "Reason (required)"),
                    submit = lang.t("利用再開", "Unblock"),
                ),
                // A revoked certificate is not undone here.
                _ => format!(
                    r#"<span class="muted">{}</span>"#,
                    lang.t("証明書失効済み", "certificate revoked")
                ),
            };
            let _ = write!(
                out,
                r#"<tr data-device="{id}"><td>{id}</td><td>{class}</td><td class="st-{st}">{st_name}</td><td>{loan}</td><td>{action}</td></tr>"#,
                id = esc(&d.id),
                class = class_name(lang, d.class),
                st = d.status.as_str(),
                st_name = status_name(lang, d.status),
                loan = esc(d.loaned_to.as_deref().unwrap_or("-")),
            );
        }
        out.push_str("</tbody></table>");
    }
    locks_section(s, v, lang, &mut out).await;
    out.push_str("</div>");
    html(
        status,
        page(lang, title, &switch_link("/officer/devices", q, lang), &out),
    )
}

/// The portal lockouts in force, each with an unlock form (on the devices page).
async fn locks_section(s: &PortalState, v: &Visitor, lang: Lang, out: &mut String) {
    let now = s.now();
    let locks = match s.store().active_lockouts(now).await {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "Cannot list lockouts");
            return;
        }
    };
    let _ = write!(
        out,
        r#"<h2>{}</h2><p class="muted">{}</p>"#,
        lang.t("ロック中の利用者", "Locked-out users"),
        lang.t(
            "ログインの失敗が続いてロックされている利用者と接続元です。本人の失敗と確かめたうえで解除してください（解除は監査ログに残ります）。",
            "Users (and the addresses) locked after repeated failed sign-ins. Unlock after checking with the person that the failures were theirs (the unlock is audited)."
        ),
    );
    if locks.is_empty() {
        let _ = write!(
            out,
            r#"<p class="muted" id="no-locks">{}</p>"#,
            lang.t("ロック中の利用者はいません。", "No one is locked out.")
        );
        return;
    }
    let _ = write!(
        out,
        r#"<table id="locks"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>"#,
        lang.t("利用者", "User"),
        lang.t("接続元", "From"),
        lang.t("解除まで", "Lock ends in"),
        lang.t("操作", "Action"),
    );
    let action = link("/officer/users/unlock", lang, &[]);
    for (key, until) in &locks {
        let (user, from) = match key.split_once(':') {
            Some(("pair", rest)) => match rest.rsplit_once('@') {
                Some((u, ip)) => (u, ip),
                None => continue,
            },
            Some(("user", u)) => (
                u,
                lang.t("全体（複数の接続元）", "everywhere (several addresses)"),
            ),
            _ => continue,
        };
        let _ = write!(
            out,
            r#"<tr data-lock-user="{uid}"><td>{uid}</td><td>{from}</td><td>{mins} {min_l}</td><td><form method="post" action="{action}" class="row-form">{csrf}<input type="hidden" name="id" value="{uid}">
<input name="reason" type="text" required maxlength="{MAX_REASON_CHARS}" aria-label="{reason_l}" placeholder="{reason_l}">
<button type="submit" class="small">{submit}</button></form></td></tr>"#,
            uid = esc(user),
            from = esc(from),
            mins = (until - now + 59) / 60,
            min_l = lang.t("分", "min"),
            csrf = csrf_input(v),
            reason_l = lang.t("理由（必須）", "Reason (required)"),
            submit = lang.t("ロック解除", "Unlock"),
        );
    }
    out.push_str("</tbody></table>");
}

/// `POST /officer/users/unlock` form.
#[derive(Debug, Deserialize)]
pub(crate) struct UnlockForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    reason: String,
}

/// `POST /officer/users/unlock`: as `admin user unlock` (`user.unlock`):
/// clears every failure counter of the user.
pub(crate) async fn users_unlock(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<UnlockForm>, FormRejection>,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let path = "/officer/devices";
    let (v, f) = match s
        .accept_form(&headers, Need::Officer, form, (lang, path, q.as_deref()))
        .await
    {
        Ok(x) => x,
        Err(page) => return page,
    };
    let reason = match check_reason(lang, &f.reason, true) {
        Ok(r) => r,
        Err(n) => {
            return devices_page(&s, &v, lang, q.as_deref(), Some(n), StatusCode::BAD_REQUEST).await
        }
    };
    let id = f.id.trim().to_owned();
    let a = Audit::new(s.now(), v.actor(), "user.unlock")
        .subject(&id)
        .reason(&reason)
        .detail(json!({ "via": "portal", "source": ip.to_string() }));
    match s.store().unlock_user(&id, a).await {
        Ok(n) => {
            info!(user = %v.user.id, unlocked = %id, counters = n, "User unlocked from the portal");
            see_other(&link(path, lang, &[("done", "user.unlock"), ("id", &id)]))
        }
        Err(e) => {
            let (st, n) = write_failed(lang, e);
            devices_page(&s, &v, lang, q.as_deref(), Some(n), st).await
        }
    }
}

/// `POST /officer/devices/block|unblock` form.
#[derive(Debug, Deserialize)]
pub(crate) struct DeviceForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    reason: String,
}

/// `POST /officer/devices/block`: as `admin device block` (`device.block`,
/// then every login token of the device revoked).
pub(crate) async fn devices_block(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<DeviceForm>, FormRejection>,
) -> Response {
    device_change(s, ip, q, headers, form, true).await
}

/// `POST /officer/devices/unblock`: as `admin device unblock`.
pub(crate) async fn devices_unblock(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<DeviceForm>, FormRejection>,
) -> Response {
    device_change(s, ip, q, headers, form, false).await
}

async fn device_change(
    s: PortalState,
    ip: std::net::IpAddr,
    q: Option<String>,
    headers: HeaderMap,
    form: Result<Form<DeviceForm>, FormRejection>,
    block: bool,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let path = "/officer/devices";
    let (v, f) = match s
        .accept_form(&headers, Need::Officer, form, (lang, path, q.as_deref()))
        .await
    {
        Ok(x) => x,
        Err(page) => return page,
    };
    let fail = |n: Notice, status: StatusCode| {
        let (s, v, q) = (s.clone(), v.clone(), q.clone());
        async move { devices_page(&s, &v, lang, q.as_deref(), Some(n), status).await }
    };
    let reason = match check_reason(lang, &f.reason, true) {
        Ok(r) => r,
        Err(n) => return fail(n, StatusCode::BAD_REQUEST).await,
    };
    let id = f.id.trim().to_owned();
    let device = match s.store().get_device(&id).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            let (st, n) = write_failed(lang, kakehashi_store::Error::NotFound { what: "device" });
            return fail(n, st).await;
        }
        Err(e) => return Refused::from(e).page(lang, path, q.as_deref()),
    };
    let now = s.now();
    let actor = v.actor();
    if block {
        let status = match f.status.trim() {
            "" | "blocked" => DeviceStatus::Blocked,
            "lost" => DeviceStatus::Lost,
            _ => {
                let n = Notice::Error(
                    lang.t(
                        "状態は「利用停止」か「紛失届出」を選んでください。",
                        "Choose blocked or reported lost.",
                    )
                    .into(),
                );
                return fail(n, StatusCode::BAD_REQUEST).await;
            }
        };
        if device.status != DeviceStatus::Active {
            let n = Notice::Error(
                lang.t(
                    "この端末は既に利用停止中です。",
                    "This device is already blocked.",
                )
                .into(),
            );
            return fail(n, StatusCode::CONFLICT).await;
        }
        let a = Audit::new(now, &actor, "device.block")
            .subject(&id)
            .reason(&reason)
            .detail(
                json!({ "status": status.as_str(), "via": "portal", "source": ip.to_string() }),
            );
        if let Err(e) = s.store().set_device_status(&id, status, a).await {
            let (st, n) = write_failed(lang, e);
            return fail(n, st).await;
        }
        let a = Audit::new(now, &actor, "token.revoke_all")
            .subject(&id)
            .reason("device_blocked");
        let n = match s.store().revoke_login_tokens_for_device(&id, a).await {
            Ok(n) => n,
            Err(e) => {
                let (st, n) = write_failed(lang, e);
                return fail(n, st).await;
            }
        };
        info!(user = %v.user.id, device = %id, status = %status, tokens = n, "Device blocked from the portal");
        see_other(&link(
            path,
            lang,
            &[("done", "device.block"), ("id", &id), ("n", &n.to_string())],
        ))
    } else {
        if !matches!(device.status, DeviceStatus::Blocked | DeviceStatus::Lost) {
            let n = Notice::Error(
                lang.t(
                    "この端末は利用停止中ではありません（証明書失効済みの端末は再開できません）。",
                    "This device is not blocked (a device whose certificate was revoked cannot be unblocked).",
                )
                .into(),
            );
            return fail(n, StatusCode::CONFLICT).await;
        }
        let a = Audit::new(now, &actor, "device.unblock")
            .subject(&id)
            .reason(&reason)
            .detail(json!({ "via": "portal", "source": ip.to_string() }));
        if let Err(e) = s
            .store()
            .set_device_status(&id, DeviceStatus::Active, a)
            .await
        {
            let (st, n) = write_failed(lang, e);
            return fail(n, st).await;
        }
        info!(user = %v.user.id, device = %id, "Device unblocked from the portal");
        see_other(&link(
            path,
            lang,
            &[("done", "device.unblock"), ("id", &id)],
        ))
    }
}

// ------------------------------------------------------------ BCP

/// `GET /officer/bcp`
pub(crate) async fn bcp(
    State(s): State<PortalState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let title = lang.t("BCPモード", "BCP mode");
    match s.visitor(&headers, Need::Officer).await {
        Ok(v) => {
            let notice = done_notice(lang, q.as_deref());
            bcp_page(&s, &v, lang, q.as_deref(), notice, StatusCode::OK).await
        }
        Err(r) => get_refused(r, lang, "/officer/bcp", q.as_deref(), title),
    }
}

fn scope_name(lang: Lang, scope: &BcpScope) -> String {
    match scope {
        BcpScope::All => lang.t("全職員", "everyone").to_owned(),
        BcpScope::Department(d) => d.clone(),
    }
}

async fn bcp_page(
    s: &PortalState,
    v: &Visitor,
    lang: Lang,
    q: Option<&str>,
    notice: Option<Notice>,
    status: StatusCode,
) -> Response {
    let title = lang.t("BCPモード", "BCP mode");
    let now = s.now();
    let (all, users) = match tokio::try_join!(s.store().list_bcp(), s.store().list_users()) {
        Ok(x) => x,
        Err(e) => return Refused::from(e).page(lang, "/officer/bcp", q),
    };
    let depts: BTreeSet<&str> = users.iter().map(|u| u.department.as_str()).collect();
    let mut out = officer_head(
        lang,
        v,
        "/officer/bcp",
        notice.as_ref(),
        lang.t(
            "大雪・感染症・災害などで出勤が難しいときに宣言します。ポリシーの bcp_default_relax に書かれた内容（既定: レベル1・2の在宅・モバイルで、計画の承認と勤務時間の制限を不要にする）だけを緩和し、期限が来ると自動的に終わります。レベル3の在宅と個人番号利用事務系は緩和されません。",
            "Declare it when people cannot come in (snow, pandemic, disaster). It relaxes only what the policy's bcp_default_relax says (by default: no approved plan and no hour window for levels 1 and 2 from home and mobile) and ends by itself at its expiry. Level 3 from home and the My Number segment are never relaxed."
        ),
    );
    // In force.
    let active: Vec<&Bcp> = all.iter().filter(|b| b.is_active(now)).collect();
    let _ = write!(out, "<h2>{}</h2>", lang.t("実施中の宣言", "In force"));
    if active.is_empty() {
        let _ = write!(
            out,
            r#"<p class="muted" id="bcp-none">{}</p>"#,
            lang.t(
                "実施中のBCP宣言はありません。",
                "No BCP declaration is in force."
            )
        );
    } else {
        let _ = write!(
            out,
            r#"<table id="bcp-active"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>"#,
            lang.t("対象", "Scope"),
            lang.t("理由", "Reason"),
            lang.t("期限", "Until"),
            lang.t("宣言者", "Declared by"),
            lang.t("終了", "End"),
        );
        for b in &active {
            let _ = write!(
                out,
                r#"<tr data-bcp="{id}"><td>{scope}</td><td>{reason}</td><td>{until}</td><td>{by}</td><td>
<form method="post" action="{action}" class="row-form">{csrf}<input type="hidden" name="id" value="{id}">
<input name="reason" type="text" required maxlength="{MAX_REASON_CHARS}" aria-label="{reason_l}" placeholder="{reason_l}">
<button type="submit" class="danger">{submit}</button></form></td></tr>"#,
                id = esc(&b.id),
                scope = esc(&scope_name(lang, &b.scope)),
                reason = esc(&b.reason),
                until = s.local_time(b.ends_at),
                by = esc(&b.declared_by),
                action = link("/officer/bcp/end", lang, &[]),
                csrf = csrf_input(v),
                reason_l = lang.t("終了の理由（必須）", "Why end it (required)"),
                submit = lang.t("今すぐ終了", "End now"),
            );
        }
        out.push_str("</tbody></table>");
    }

    // Declare.
    let tomorrow = s
        .local_now()
        .date()
        .next_day()
        .unwrap_or(s.local_now().date());
    let mut dept_options = String::new();
    for d in &depts {
        let _ = write!(dept_options, r#"<option value="{}">"#, esc(d));
    }
    let _ = write!(
        out,
        r#"<h2>{h}</h2>
<form id="bcp-declare" class="card" method="post" action="{action}">{csrf}
<fieldset class="plain"><legend>{scope_l}</legend>
<label class="inline-label"><input type="radio" name="scope" value="all" checked> {all}</label>
<label class="inline-label"><input type="radio" name="scope" value="dept"> {dept_only}</label>
<input id="bcp-dept" name="dept" type="text" maxlength="128" list="bcp-depts" aria-label="{dept_l}" placeholder="{dept_l}">
<datalist id="bcp-depts">{dept_options}</datalist>
</fieldset>
<label for="bcp-reason">{reason_l}</label>
<input id="bcp-reason" name="reason" type="text" required maxlength="{MAX_REASON_CHARS}" placeholder="{reason_ph}">
<label for="bcp-until-date">{until_l}</label>
<span class="datetime"><input id="bcp-until-date" name="until_date" type="date" required value="{until_date}"> <input id="bcp-until-time" name="until_time" type="time" required value="18:00" aria-label="{until_l}"></span>
<button type="submit" class="danger-strong">{submit}</button>
</form>"#,
        h = lang.t("BCPモードを宣言する", "Declare BCP mode"),
        action = link("/officer/bcp/declare", lang, &[]),
        csrf = csrf_input(v),
        scope_l = lang.t("対象", "Scope"),
        all = lang.t("全職員", "Everyone"),
        dept_only = lang.t("次の所属のみ:", "Only this department:"),
        dept_l = lang.t("所属", "Department"),
        reason_l = lang.t(
            "理由（必須・お知らせに表示され、監査ログに記録）",
            "Reason (required; shown in the banner and kept in the audit log)"
        ),
        reason_ph = lang.t("例: 大雪のため", "e.g. heavy snow"),
        until_l = lang.t(
            "終了日時（この時刻に自動で終了）",
            "Ends at (automatically)"
        ),
        until_date = ymd(tomorrow),
        submit = lang.t("BCPモードを宣言", "Declare BCP mode"),
    );

    // History.
    let past: Vec<&Bcp> = all.iter().filter(|b| !b.is_active(now)).take(50).collect();
    if !past.is_empty() {
        let _ = write!(
            out,
            r#"<h2>{}</h2><table id="bcp-history"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>"#,
            lang.t("過去の宣言", "Past declarations"),
            lang.t("対象", "Scope"),
            lang.t("理由", "Reason"),
            lang.t("期間", "Period"),
            lang.t("宣言者／終了者", "Declared / ended by"),
        );
        for b in past {
            let end = b.ended_at.unwrap_or(b.ends_at).min(b.ends_at);
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{} – {}</td><td>{} / {}</td></tr>",
                esc(&scope_name(lang, &b.scope)),
                esc(&b.reason),
                s.local_time(b.starts_at),
                s.local_time(end),
                esc(&b.declared_by),
                esc(b.ended_by.as_deref().unwrap_or(lang.t("期限", "expiry"))),
            );
        }
        out.push_str("</tbody></table>");
    }
    out.push_str("</div>");
    html(
        status,
        page(lang, title, &switch_link("/officer/bcp", q, lang), &out),
    )
}

/// `POST /officer/bcp/declare` form.
#[derive(Debug, Deserialize)]
pub(crate) struct DeclareForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    dept: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    until_date: String,
    #[serde(default)]
    until_time: String,
}

/// `POST /officer/bcp/declare`: as `bcp declare` (the relaxation is the
/// policy's `bcp_default_relax`).
pub(crate) async fn bcp_declare(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<DeclareForm>, FormRejection>,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let path = "/officer/bcp";
    let (v, f) = match s
        .accept_form(&headers, Need::Officer, form, (lang, path, q.as_deref()))
        .await
    {
        Ok(x) => x,
        Err(page) => return page,
    };
    let fail = |n: Notice, status: StatusCode| {
        let (s, v, q) = (s.clone(), v.clone(), q.clone());
        async move { bcp_page(&s, &v, lang, q.as_deref(), Some(n), status).await }
    };
    let bad = |ja: &'static str, en: &'static str| Notice::Error(lang.t(ja, en).to_owned());
    let reason = match check_reason(lang, &f.reason, true) {
        Ok(r) => r,
        Err(n) => return fail(n, StatusCode::BAD_REQUEST).await,
    };
    let scope = match (f.scope.as_str(), f.dept.trim()) {
        ("all", _) => BcpScope::All,
        ("dept", d) if !d.is_empty() && d != "*" => BcpScope::Department(d.to_owned()),
        _ => {
            let n = bad(
                "対象の所属を入力してください。",
                "Enter the department it covers.",
            );
            return fail(n, StatusCode::BAD_REQUEST).await;
        }
    };
    let now = s.now();
    let until = match local_instant(&f.until_date, &f.until_time, s.offset()) {
        Some(t) if t.unix_timestamp() > now => t.unix_timestamp(),
        Some(_) => {
            let n = bad(
                "終了日時は現在より後にしてください。",
                "The end must be in the future.",
            );
            return fail(n, StatusCode::BAD_REQUEST).await;
        }
        None => {
            let n = bad("終了日時が正しくありません。", "The end time is not valid.");
            return fail(n, StatusCode::BAD_REQUEST).await;
        }
    };
    let policy = match s.store().current_policy().await {
        Ok(Some(d)) => match kakehashi_relay::admission::parse_policy(&d.text) {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "The stored policy does not parse");
                return Refused::Internal.page(lang, path, q.as_deref());
            }
        },
        Ok(None) => {
            let n = bad(
                "ポリシーがまだ保存されていません（ゲートウェイを一度起動してください）。",
                "No policy saved yet (start the gateway once).",
            );
            return fail(n, StatusCode::CONFLICT).await;
        }
        Err(e) => return Refused::from(e).page(lang, path, q.as_deref()),
    };
    let relax = serde_json::to_value(&policy.bcp_default_relax).unwrap_or(Value::Null);
    let spec = BcpSpec {
        scope,
        reason: reason.clone(),
        relax: relax.clone(),
        starts_at: now,
        ends_at: until,
    };
    let subject = match &spec.scope {
        BcpScope::All => "all".to_owned(),
        BcpScope::Department(d) => d.clone(),
    };
    let a = Audit::new(now, v.actor(), "bcp.declare")
        .subject(&subject)
        .reason(&reason)
        .detail(
            json!({ "until": until, "relax": relax, "via": "portal", "source": ip.to_string() }),
        );
    match s.store().declare_bcp(&spec, a).await {
        Ok(b) => {
            info!(user = %v.user.id, bcp = %b.id, scope = %subject, until, "BCP declared from the portal");
            see_other(&link(path, lang, &[("done", "bcp.declare"), ("id", &b.id)]))
        }
        Err(e) => {
            let (st, n) = write_failed(lang, e);
            fail(n, st).await
        }
    }
}

/// `POST /officer/bcp/end` form.
#[derive(Debug, Deserialize)]
pub(crate) struct EndForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    reason: String,
}

/// `POST /officer/bcp/end`: as `bcp end --id`.
pub(crate) async fn bcp_end(
    State(s): State<PortalState>,
    Peer(ip): Peer,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    form: Result<Form<EndForm>, FormRejection>,
) -> Response {
    let lang = Lang::from_query(q.as_deref());
    let path = "/officer/bcp";
    let (v, f) = match s
        .accept_form(&headers, Need::Officer, form, (lang, path, q.as_deref()))
        .await
    {
        Ok(x) => x,
        Err(page) => return page,
    };
    let fail = |n: Notice, status: StatusCode| {
        let (s, v, q) = (s.clone(), v.clone(), q.clone());
        async move { bcp_page(&s, &v, lang, q.as_deref(), Some(n), status).await }
    };
    let reason = match check_reason(lang, &f.reason, true) {
        Ok(r) => r,
        Err(n) => return fail(n, StatusCode::BAD_REQUEST).await,
    };
    let id = f.id.trim().to_owned();
    let a = Audit::new(s.now(), v.actor(), "bcp.end")
        .subject(&id)
        .reason(&reason)
        .detail(json!({ "via": "portal", "source": ip.to_string() }));
    match s.store().end_bcp(&id, a).await {
        Ok(_) => {
            info!(user = %v.user.id, bcp = %id, "BCP ended from the portal");
            see_other(&link(path, lang, &[("done", "bcp.end"), ("id", &id)]))
        }
        Err(e) => {
            let (st, n) = write_failed(lang, e);
            fail(n, st).await
        }
    }
}

/// The banner for the declarations in force, in the page's language.
fn banner_html(s: &PortalState, lang: Lang, active: &[Bcp]) -> String {
    let mut out =
        String::from(r#"<div id="bcp-banner" class="bcp-banner" role="status"><div class="wrap">"#);
    for b in active {
        let _ = write!(
            out,
            r#"<p><strong>{title}</strong> {scope_l}: {scope} ／ {reason_l}: {reason} ／ {until_l}: {until}{until_t}</p>"#,
            title = lang.t("BCPモード実施中", "BCP mode in force"),
            scope_l = lang.t("対象", "scope"),
            scope = esc(&scope_name(lang, &b.scope)),
            reason_l = lang.t("理由", "reason"),
            reason = esc(&b.reason),
            until_l = lang.t("期限", "until"),
            until = s.local_time(b.ends_at),
            until_t = lang.t(" まで", ""),
        );
    }
    out.push_str("</div></div>");
    out
}

/// Puts the BCP banner into every HTML page while a declaration is in
/// force (one store read per HTML page; other answers pass untouched).
pub(crate) async fn bcp_banner(
    State(s): State<PortalState>,
    req: Request<Body>,
    next: Next,
) -> Response {
    let resp = next.run(req).await;
    let is_html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if !is_html {
        return resp;
    }
    let active = match s.store().active_bcp(s.now()).await {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => return resp,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "Cannot read BCP declarations for the banner");
            return resp;
        }
    };
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_PAGE).await {
        Ok(b) => b,
        Err(e) => {
            warn!(error = %e, "Cannot read a portal page to add the BCP banner");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let lang = if text.contains(r#"<html lang="en">"#) {
        Lang::En
    } else {
        Lang::Ja
    };
    let out = text.replacen(BANNER_SLOT, &banner_html(&s, lang, &active), 1);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

/// `GET /assets/officer.js`
pub(crate) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("assets/officer.js"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wi(level: &str, class: &str, date: &str, time: &str) -> WhatIf {
        WhatIf {
            level: level.into(),
            class: class.into(),
            date: date.into(),
            time: time.into(),
            ..WhatIf::default()
        }
    }

    #[test]
    fn preview_follows_the_text_being_edited() {
        let text = pol::default_policy_toml();
        let w = wi("2", "satellite", "2026-01-15", "10:00");
        let p = preview(text, &w);
        assert_eq!(p["errors"], 0, "{p}");
        assert_eq!(p["decision"]["allow"], true, "{p}");
        assert_eq!(p["decision"]["rule"], "l2-satellite");
        assert_eq!(p["decision"]["controls"]["printer"], true);
        assert_eq!(p["at"], "2026-01-15T10:00:00+09:00");
        assert!(p["steps"].as_array().is_some_and(|s| !s.is_empty()));

        // The l2-satellite rule turned to deny; CRLF as a browser sends it.
        let at = text.find("id = \"l2-satellite\"").unwrap();
        let (head, tail) = text.split_at(at);
        let tail = tail.replacen("effect = \"allow\"", "effect = \"deny\"", 1);
        let edited = format!("{head}{tail}").replace('\n', "\r\n");
        let p = preview(&edited, &w);
        assert_eq!(p["decision"]["allow"], false, "{p}");
        assert_eq!(p["decision"]["reason"], "level_not_permitted");
        assert_eq!(p["decision"]["rule"], "l2-satellite");
        assert!(p["decision"]["ja"].as_str().is_some_and(|s| !s.is_empty()));

        // Outside hours from home; a broken file gives diagnostics only.
        let p = preview(text, &wi("2", "home", "2026-01-15", "18:00"));
        assert_eq!(p["decision"]["reason"], "outside_hours");
        let broken = text.replacen("levels = [3]", "levels = [4]", 1);
        let p = preview(&broken, &w);
        assert_eq!(p["errors"], 1, "{p}");
        assert_eq!(p["decision"], Value::Null);
        let d = &p["diagnostics"][0];
        assert!(d["line"].as_u64().unwrap() > 1, "{p}");
        assert_eq!(d["field"], "rules[0].levels[0]");
        // A bad what-if is reported, not a decision.
        let p = preview(text, &wi("4", "home", "2026-01-15", "10:00"));
        assert!(p["what_if_error"].is_string(), "{p}");
        let p = preview(text, &wi("2", "home", "15/01/2026", "10:00"));
        assert!(p["what_if_error"].is_string(), "{p}");
    }

    #[test]
    fn times_and_dates_parse_strictly() {
        assert_eq!(parse_hhmm("08:30"), Some(510));
        assert_eq!(parse_hhmm("24:00"), Some(1440));
        assert_eq!(parse_hhmm("24:01"), None);
        assert_eq!(parse_hhmm("8:30"), None);
        assert_eq!(hhmm(1035), "17:15");
        assert_eq!(parse_date("2026-02-29"), None);
        assert_eq!(
            parse_date("2026-01-15").map(ymd).as_deref(),
            Some("2026-01-15")
        );
        let off = UtcOffset::from_hms(9, 0, 0).unwrap();
        let t = local_instant("2026-01-15", "18:00", off).unwrap();
        assert_eq!(t.unix_timestamp(), 1_768_467_600);
        assert!(local_instant("2026-01-15", "24:00", off).is_none());
    }
}

super::access::csrf_forms!(
    SaveForm,
    DeskForm,
    DeviceForm,
    UnlockForm,
    DeclareForm,
    EndForm
);
