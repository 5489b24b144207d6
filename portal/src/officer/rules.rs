//! ルール: the access policy in an editor with a live what-if preview, its
//! history, and saving a new version.

use super::*;

/// The what-if request the officer sets on the rules page.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct WhatIf {
    pub(crate) level: String,
    pub(crate) class: String,
    pub(crate) segment: String,
    /// Local date `YYYY-MM-DD`, in the policy's timezone.
    pub(crate) date: String,
    /// Local time `HH:MM`.
    pub(crate) time: String,
    /// `approved` or `none`.
    pub(crate) plan: String,
    pub(crate) bcp: bool,
    pub(crate) dept: String,
    /// Minutes since the multi-factor login.
    pub(crate) mfa_age: Option<u64>,
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
    pub(crate) csrf: String,
    #[serde(default)]
    pub(crate) text: String,
    #[serde(flatten)]
    pub(crate) what_if: WhatIf,
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
    let title = crate::views::officer_rules::title(lang);
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
    match rules_body(s, v, lang, q, text, notice.as_ref()).await {
        Ok(page) => (status, page).into_response(),
        Err(e) => Refused::from(e).page(lang, "/officer/rules", q),
    }
}

async fn rules_body(
    s: &PortalState,
    v: &Visitor,
    lang: Lang,
    q: Option<&str>,
    text: Option<String>,
    notice: Option<&Notice>,
) -> kakehashi_store::Result<maud::Markup> {
    use crate::views::officer_rules::{self as view, Version};
    let store = s.store();
    let current = store.current_policy().await?;
    let text = text.unwrap_or_else(|| {
        current
            .as_ref()
            .map_or_else(|| pol::default_policy_toml().to_owned(), |d| d.text.clone())
    });
    let mut history = Vec::new();
    if let Some(cur) = &current {
        let oldest = (cur.version - HISTORY + 1).max(1);
        for n in (oldest..=cur.version).rev() {
            let Some(d) = store.policy_version(n).await? else {
                continue;
            };
            history.push(Version {
                version: n,
                saved: s.local_time(d.created),
                author: d.author,
                load: (n != cur.version)
                    .then(|| link("/officer/rules", lang, &[("version", &n.to_string())])),
            });
        }
    }
    let wi = WhatIf::default();
    let today = ymd(s.local_now().date());
    let page = view::Rules {
        head: view_head(v, "/officer/rules", notice),
        current: current.as_ref().map(|d| Version {
            version: d.version,
            saved: s.local_time(d.created),
            author: d.author.clone(),
            load: None,
        }),
        text: &text,
        what_if: view::WhatIf {
            level: &wi.level,
            class: &wi.class,
            segment: &wi.segment,
            date: &today,
            time: &wi.time,
            plan: &wi.plan,
        },
        history,
    };
    Ok(view::rules(
        lang,
        &switch_link("/officer/rules", q, lang),
        &page,
    ))
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

crate::access::csrf_forms!(SaveForm);
