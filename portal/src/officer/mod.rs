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
//! audit feed and re-decides its live sessions within `[policy] watch`.
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
use time::{Date, OffsetDateTime, UtcOffset};
use tracing::{info, warn};

use super::access::{get_refused, Need, Refused, Visitor};
use crate::html::{switch_link, Lang};
use crate::state::{Peer, PortalState};
use crate::views::layout::BANNER_SLOT;
use crate::views::officer::{Head, MAX_REASON_CHARS};
use crate::views::parts::Notice;

/// Largest request body of the policy editor's routes: a 1 MiB policy
/// (the store's limit) form-encoded is larger than the portal's default.
pub(super) const MAX_POLICY_BODY: usize = 2 * 1024 * 1024;
/// Versions listed in the history.
const HISTORY: i64 = 30;
/// Largest page the BCP banner is put into.
const MAX_PAGE: usize = 4 * 1024 * 1024;

// ------------------------------------------------------------ shared bits

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

/// The top of an officer page for `v`, with `path` as the current tab.
fn view_head<'a>(v: &'a Visitor, path: &'a str, notice: Option<&'a Notice>) -> Head<'a> {
    Head {
        user: &v.user,
        csrf: &v.csrf,
        path,
        notice,
    }
}

impl PortalState {
    /// The configured local UTC offset (`[identity] utc_offset_hours`).
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
    kakehashi_store::localtime::parse_date_opt(s.trim())
}

/// `HH:MM` as minutes after midnight (`24:00` allowed).
pub(super) fn parse_hhmm(s: &str) -> Option<u16> {
    kakehashi_store::localtime::parse_hhmm_strict(s)
}

/// Minutes after midnight as `HH:MM`.
pub(super) fn hhmm(min: u16) -> String {
    kakehashi_store::localtime::hhmm(min)
}

/// `YYYY-MM-DD`.
pub(super) fn ymd(d: Date) -> String {
    kakehashi_store::localtime::ymd(d)
}

/// A local date and time at `offset`.
fn local_instant(date: &str, time: &str, offset: UtcOffset) -> Option<OffsetDateTime> {
    let d = parse_date(date)?;
    let min = parse_hhmm(time)?;
    if min >= 1440 {
        return None;
    }
    let t = time::Time::from_hms(
        u8::try_from(min / 60).ok()?,
        u8::try_from(min % 60).ok()?,
        0,
    )
    .ok()?;
    Some(d.with_time(t).assume_offset(offset))
}

// ------------------------------------------------------------ rules

/// `GET /officer`
pub(crate) async fn home(RawQuery(q): RawQuery) -> Response {
    let lang = Lang::from_query(q.as_deref());
    see_other(&link("/officer/rules", lang, &[]))
}

pub(crate) mod bcp;
pub(crate) mod desks;
pub(crate) mod devices;
pub(crate) mod rules;

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

/// `GET /assets/officer.js`
pub(crate) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("../assets/officer.js"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::rules::*;
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
