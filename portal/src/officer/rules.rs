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
