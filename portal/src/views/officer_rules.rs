//! `GET /officer/rules`: the access policy in an editor (the save form),
//! the what-if preview beside it (its script, `/assets/officer.js`, asks
//! `POST /officer/rules/preview` as the officer types), and the history.

use maud::{html, Markup};

use super::officer::{officer_page, Head, MAX_REASON_CHARS};
use super::parts::{csrf_input, options};
use crate::html::Lang;

/// The page title.
pub(crate) fn title(lang: Lang) -> &'static str {
    lang.t("ルール（アクセスポリシー）", "Rules (access policy)")
}

/// Everything the page shows.
#[derive(Debug)]
pub(crate) struct Rules<'a> {
    pub(crate) head: Head<'a>,
    /// The version in force, if one was saved.
    pub(crate) current: Option<Version>,
    /// The text in the editor.
    pub(crate) text: &'a str,
    /// The preview's first hypothetical connection.
    pub(crate) what_if: WhatIf<'a>,
    /// Newest first; empty without a saved version.
    pub(crate) history: Vec<Version>,
}

/// A saved version of the policy.
#[derive(Debug)]
pub(crate) struct Version {
    pub(crate) version: i64,
    /// Local time.
    pub(crate) saved: String,
    pub(crate) author: String,
    /// "Load into the editor" (none for the version in force).
    pub(crate) load: Option<String>,
}

/// The preview form's starting values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WhatIf<'a> {
    pub(crate) level: &'a str,
    pub(crate) class: &'a str,
    pub(crate) segment: &'a str,
    /// `YYYY-MM-DD`.
    pub(crate) date: &'a str,
    /// `HH:MM`.
    pub(crate) time: &'a str,
    pub(crate) plan: &'a str,
}

/// The rules page; `switch` is the same page in the other language.
pub(crate) fn rules(lang: Lang, switch: &str, v: &Rules<'_>) -> Markup {
    let lead = lang.t(
        "接続の可否を決めるルールを TOML で編集します。右側で仮定の接続を設定すると、編集中の内容での判定がその場で表示されます。保存すると検証のうえ新しいバージョンとして適用され、監査ログに記録されます。",
        "Edit the rules that decide every connection, as TOML. Set a hypothetical connection on the right to see how the text being edited decides it. Saving validates the text, puts it in force as a new version and records it in the audit log.",
    );
    let content = html! {
        @match &v.current {
            Some(c) => {
                p id="current-version" data-version=(c.version) {
                    (lang.t("適用中:", "In force:")) " "
                    strong { (lang.t("バージョン", "version")) " " (c.version) }
                    "（" (c.saved) "、" (c.author) "）"
                }
            }
            None => {
                p id="current-version" data-version="0" {
                    (lang.t(
                        "まだ保存されたポリシーはありません（既定のポリシーを表示しています）。",
                        "No policy saved yet (showing the shipped default)."
                    ))
                }
            }
        }
        // The editor (the save form) and the preview side by side.
        div class="rules-grid" {
            (editor(lang, v))
            (preview(lang, v.what_if))
        }
        script src="/assets/officer.js" defer {}
        (history(lang, v))
    };
    officer_page(lang, title(lang), switch, v.head, lead, content)
}

fn editor(lang: Lang, v: &Rules<'_>) -> Markup {
    let t = |ja, en| lang.t(ja, en);
    html! {
        form id="rules-editor" class="card" method="post" action={ "/officer/rules" (lang.query()) }
            data-preview="/officer/rules/preview" data-lang=(lang.code()) data-csrf=(v.head.csrf)
            data-msg-checking=(t("確認中…", "Checking…"))
            data-msg-failed=(t("プレビューを取得できませんでした。", "The preview is unavailable."))
            data-msg-noerrors=(t("エラーなし", "No errors"))
            data-msg-rules=(t("ルール数", "rules"))
            data-msg-error=(t("エラー", "error"))
            data-msg-warning=(t("警告", "warning"))
            data-msg-line=(t("行", "line"))
            data-msg-col=(t("列", "col"))
            data-msg-allow=(t("許可", "ALLOW"))
            data-msg-deny=(t("拒否", "DENY"))
            data-msg-rule=(t("決定したルール", "Deciding rule"))
            data-msg-norule=(t("（なし）", "(none)"))
            data-msg-reason=(t("理由コード", "Reason code"))
            data-msg-controls=(t("セッション制御", "Session controls"))
            data-msg-limits=(t("制限", "Limits"))
            data-msg-endat=(t("終了時刻", "Ends at"))
            data-msg-maxdur=(t("最大接続時間", "Max duration"))
            data-msg-idle=(t("無操作タイムアウト", "Idle timeout"))
            data-msg-mfa=(t("認証の有効期間", "MFA max age"))
            data-msg-stepup=(t("再認証（ステップアップ）", "Step-up"))
            data-msg-required=(t("必要", "required"))
            data-msg-notrequired=(t("不要", "not required"))
            data-msg-min=(t("分", "min"))
            data-msg-yes=(t("可", "yes"))
            data-msg-no=(t("不可", "no"))
            data-msg-none=(t("なし", "none"))
            data-msg-at=(t("判定時刻", "At"))
            data-msg-steps=(t("評価の過程", "Evaluation steps"))
            data-msg-invalid=(t("ポリシーにエラーがあるため判定できません。", "The policy has errors: no decision."))
            data-msg-whatif=(t("仮定の接続の入力が正しくありません", "The hypothetical connection is not valid"))
            data-msg-clipboard=(t("クリップボード", "clipboard"))
            data-msg-drive=(t("ドライブ", "drive"))
            data-msg-printer=(t("プリンター", "printer"))
            data-msg-ports=(t("ポート", "ports"))
            data-msg-usb=(t("USB", "USB"))
            data-msg-audio=(t("音声", "audio"))
            data-msg-smartcard=(t("スマートカード", "smartcard"))
        {
            (csrf_input(v.head.csrf))
            input type="hidden" name="base_version" value=(v.current.as_ref().map_or(0, |c| c.version));
            label for="policy-text" { (t("ポリシー（TOML）", "Policy (TOML)")) }
            textarea id="policy-text" name="text" rows="32" spellcheck="false" autocapitalize="off" autocomplete="off" wrap="off" {
                (v.text)
            }
            label for="reason" { (t("理由（必須・監査ログに記録）", "Reason (required, kept in the audit log)")) }
            input id="reason" name="reason" type="text" maxlength=(MAX_REASON_CHARS) required
                placeholder=(t("例: 情報セキュリティ委員会の決定", "e.g. decided by the security committee"));
            " "
            button type="submit" id="save" { (t("検証して保存・適用", "Validate, save and put in force")) }
            p class="field-hint" {
                (t(
                    "保存すると、接続中のセッションも新しいルールで再判定され、許可されなくなったセッションは終了します。",
                    "Saving re-decides live sessions too: those the new rules no longer allow are ended."
                ))
            }
        }
    }
}

fn preview(lang: Lang, wi: WhatIf<'_>) -> Markup {
    let t = |ja, en| lang.t(ja, en);
    let segments = [
        ("lgwan", t("LGWAN接続系", "LGWAN")),
        ("internet", t("インターネット接続系", "internet")),
        ("mynumber", t("個人番号利用事務系", "My Number")),
    ];
    html! {
        section class="card preview" aria-labelledby="preview-h" {
            h2 id="preview-h" { (t("判定のプレビュー（仮定の接続）", "Preview: a hypothetical connection")) }
            div class="whatif" {
                label for="wi-level" { (t("機密性レベル", "Confidentiality level")) }
                select id="wi-level" { (options(&[("1", "1"), ("2", "2"), ("3", "3")], wi.level)) }
                label for="wi-class" { (t("端末区分", "Terminal class")) }
                select id="wi-class" {
                    (options(
                        &[
                            ("home", t("在宅", "home")),
                            ("mobile", t("モバイル", "mobile")),
                            ("satellite", t("サテライトオフィス", "satellite office")),
                        ],
                        wi.class,
                    ))
                }
                label for="wi-segment" { (t("ネットワーク", "Segment")) }
                select id="wi-segment" { (options(&segments, wi.segment)) }
                label for="wi-date" { (t("日付", "Date")) }
                input id="wi-date" type="date" value=(wi.date);
                label for="wi-time" { (t("時刻", "Time")) }
                input id="wi-time" type="time" value=(wi.time);
                label for="wi-plan" { (t("テレワーク計画", "Telework plan")) }
                select id="wi-plan" {
                    (options(&[("approved", t("承認済み", "approved")), ("none", t("なし", "none"))], wi.plan))
                }
                label for="wi-bcp" { (t("BCP宣言", "BCP declared")) }
                span {
                    input id="wi-bcp" type="checkbox";
                    " "
                    span class="muted" { (t("全職員、既定の緩和内容", "everyone, the default relaxation")) }
                }
                label for="wi-dept" { (t("所属（任意）", "Department (optional)")) }
                input id="wi-dept" type="text" maxlength="128" placeholder=(t("例: 税務課", "e.g. 税務課"));
                label for="wi-mfa" { (t("認証からの経過（分）", "Minutes since sign-in")) }
                input id="wi-mfa" type="number" min="0" max="100000" value="0";
            }
            p class="field-hint" {
                (t(
                    "仮定: 本人はデスクの利用者、端末は利用可、必要なら再認証済み。時刻はポリシーの timezone で解釈します。",
                    "Assumed: the person owns the desk, the device is active, a step-up is made when asked. The time is read in the policy's timezone."
                ))
            }
            div id="preview-status" class="muted" role="status" aria-live="polite" {}
            div id="preview-decision" data-allow="" aria-live="polite" {}
            div id="preview-diags" {}
            details id="preview-steps-box" {
                summary { (t("評価の過程", "Evaluation steps")) }
                table id="preview-steps" { tbody {} }
            }
        }
    }
}

fn history(lang: Lang, v: &Rules<'_>) -> Markup {
    html! {
        h2 { (lang.t("保存履歴", "History")) }
        @if v.current.is_none() {
            p class="muted" { (lang.t("履歴はありません。", "No versions yet.")) }
        } @else {
            table id="history" {
                thead { tr {
                    th { (lang.t("バージョン", "Version")) }
                    th { (lang.t("保存日時", "Saved")) }
                    th { (lang.t("保存者", "By")) }
                    th {}
                } }
                tbody {
                    @for d in &v.history {
                        tr data-version=(d.version) {
                            td { (d.version) }
                            td { (d.saved) }
                            td { (d.author) }
                            td {
                                @match &d.load {
                                    Some(href) => a href=(href) { (lang.t("編集欄に読み込む", "Load into the editor")) },
                                    None => (lang.t("適用中", "in force")),
                                }
                            }
                        }
                    }
                }
            }
            p class="field-hint" {
                (lang.t(
                    "変更の理由は監査ログ（kakehashi-gateway audit export）に記録されています。",
                    "The reasons are in the audit log (kakehashi-gateway audit export)."
                ))
            }
        }
    }
}
