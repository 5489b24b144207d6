//! `GET /ops`: the operators' live dashboard. The page is an empty frame
//! of tiles, tables, a chart and the session list; its script
//! (`/assets/ops.js`) fills them from the event stream. Also the notices
//! of the dashboard's refusals.

use maud::{html, Markup};

use super::layout::page;
use crate::html::Lang;

/// The page title.
pub(crate) fn title(lang: Lang) -> &'static str {
    lang.t("運用ダッシュボード", "Operations dashboard")
}

fn notice_title(lang: Lang) -> &'static str {
    lang.t("お知らせ", "Notice")
}

/// The dashboard for operator `user`; `max_filter` is the filter's
/// longest length.
pub(crate) fn dashboard(
    lang: Lang,
    switch: &str,
    user: &str,
    csrf: &str,
    max_filter: usize,
) -> Markup {
    let t = |ja, en| lang.t(ja, en);
    let events = if lang == Lang::En {
        "/ops/events?lang=en"
    } else {
        "/ops/events"
    };
    let body = html! {
        link rel="stylesheet" href="/assets/ops.css";
        script src="/assets/ops.js" defer {}
        div id="ops" class="ops" data-lang=(lang.code()) data-events=(events) data-seq="0" {
            p class="ops-who" {
                span { (t("ログイン中", "Signed in as")) ": " strong { (user) } }
                " "
                span id="ops-conn" class="ops-conn" role="status" aria-live="polite" { (t("接続中…", "Connecting…")) }
            }
            noscript { p class="status error" { (t("ライブ表示には JavaScript が必要です。", "The live view needs JavaScript.")) } }
            div id="ops-bcp" class="ops-bcp" role="status" hidden {}
            p id="ops-notice" class="status ok" role="status" hidden {}
            section class="ops-tiles" aria-label=(t("概要", "Summary")) {
                div class="ops-tile ops-tile-main" {
                    h2 { (t("接続中のセッション", "Live sessions")) }
                    p class="ops-big" { span id="ops-total" data-metric="total" { "–" } }
                    meter id="ops-capacity" min="0" max="1" low="0.6" high="0.8" optimum="0" value="0" {}
                    p class="muted" { span id="ops-capacity-text" { "–" } }
                    p class="muted" { span id="ops-cluster-total" hidden { "–" } }
                }
                div class="ops-tile" {
                    h2 { (t("オンラインのデスク", "Desks online")) }
                    p class="ops-big" { span data-metric="agents" { "–" } }
                    p class="muted" { (t("エージェント接続数", "agents with a live tunnel")) }
                }
                div class="ops-tile" {
                    h2 { (t("ログイン（直近1分）", "Logins (last minute)")) }
                    p class="ops-big" { span data-metric="logins_minute" { "–" } }
                    p class="muted" { (t("起動後の累計", "since start")) ": " span data-metric="logins_total" { "–" } }
                }
                div class="ops-tile" {
                    h2 { (t("拒否（直近1時間）", "Refusals (last hour)")) }
                    p class="ops-big" { span data-metric="denials_hour" { "–" } }
                    p class="muted" { (t("理由別の内訳は下の表", "by reason below")) }
                }
            }
            section class="ops-card" id="ops-gateways-card" hidden {
                h2 { (t("ゲートウェイ別", "By gateway")) }
                table class="ops-table" id="ops-gateways" {
                    thead { tr {
                        th { (t("ゲートウェイ", "Gateway")) }
                        th { (t("状態", "State")) }
                        th { (t("セッション", "Sessions")) }
                        th { (t("エージェント", "Agents")) }
                        th { (t("未反映の変更", "Feed lag")) }
                        th { (t("最終応答", "Last heartbeat")) }
                    } }
                    tbody {}
                }
            }
            section class="ops-grid" {
                div class="ops-card" { h2 { (t("機密性レベル別", "By confidentiality level")) } table class="ops-table" id="ops-by-level" { tbody {} } }
                div class="ops-card" { h2 { (t("端末区分別", "By terminal class")) } table class="ops-table" id="ops-by-class" { tbody {} } }
                div class="ops-card" { h2 { (t("所属別", "By department")) } table class="ops-table" id="ops-by-dept" { tbody {} } }
                div class="ops-card" { h2 { (t("通信方式別", "By transport")) } table class="ops-table" id="ops-by-transport" { tbody {} } }
                div class="ops-card ops-wide2" { h2 { (t("拒否の理由（直近1時間）", "Refusals by reason (last hour)")) } table class="ops-table" id="ops-denials" { tbody {} } }
            }
            section class="ops-card ops-chart-card" {
                h2 { (t("直近24時間", "Last 24 hours")) }
                svg id="ops-chart" class="ops-chart" viewBox="0 0 1000 220" role="img" aria-label=(t("直近24時間", "Last 24 hours")) {}
                p class="ops-legend" {
                    span class="ops-key sessions" {} (t("セッション数", "sessions")) " "
                    span class="ops-key logins" {} (t("ログイン/分", "logins/min")) " "
                    span class="ops-key denials" {} (t("拒否/分", "refusals/min"))
                }
            }
            section class="ops-card" {
                h2 { (t("接続中のセッション一覧", "Live sessions")) }
                p {
                    label for="ops-filter" { (t("絞り込み", "Filter")) }
                    " "
                    input type="search" id="ops-filter" maxlength=(max_filter) autocomplete="off" placeholder=(t("デスク・端末・利用者ID", "desk, device or user id"));
                }
                p id="ops-list-count" class="muted" aria-live="polite" {}
                div class="ops-scroll" {
                    table id="ops-sessions" class="ops-sessions" {
                        thead { tr {
                            th { (t("開始", "Started")) }
                            th { (t("デスク", "Desk")) }
                            th { (t("端末", "Device")) }
                            th { (t("利用者", "User")) }
                            th { (t("レベル", "Level")) }
                            th { (t("端末区分", "Class")) }
                            th { (t("所属", "Department")) }
                            th { (t("方式", "Transport")) }
                            th { (t("ゲートウェイ", "Gateway")) }
                            th {}
                        } }
                        tbody {}
                    }
                }
            }
            dialog id="ops-end-dialog" class="ops-dialog" {
                form id="ops-end-form" method="post" action={ "/ops/sessions/end" (lang.query()) } {
                    h2 { (t("セッションの終了", "End a session")) }
                    p id="ops-end-what" {}
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="id" id="ops-end-id" value="";
                    label for="ops-end-reason" { (t("理由（必須）", "Reason (required)")) }
                    input type="text" name="reason" id="ops-end-reason" required maxlength="500" autocomplete="off";
                    p class="hint" {
                        (t(
                            "理由は監査ログに記録されます。利用者の端末には「運用担当者がセッションを終了しました」と表示されます。",
                            "The reason is kept in the audit log. The user's laptop shows \"An operator ended the session.\""
                        ))
                    }
                    p id="ops-end-status" class="status" role="alert" hidden {}
                    p {
                        button type="submit" class="danger" id="ops-end-confirm" { (t("終了する", "End session")) }
                        " "
                        button type="button" class="secondary" id="ops-end-cancel" { (t("キャンセル", "Cancel")) }
                    }
                }
            }
        }
    };
    page(lang, title(lang), switch, body)
}

/// The dashboard of a portal that runs without a gateway.
pub(crate) fn unavailable(lang: Lang) -> Markup {
    let body = html! {
        div class="card notice error" role="alert" {
            p lang="ja" { "このポータルはゲートウェイと接続されていないため、運用ダッシュボードを表示できません。" }
            p lang="en" { "This portal is not attached to a gateway; the dashboard is unavailable." }
        }
    };
    page(lang, notice_title(lang), "/ops", body)
}

/// Ending a session failed (a plain form post, without the script).
pub(crate) fn end_failed(lang: Lang, ja: &str, en: &str, code: &str) -> Markup {
    let body = html! {
        div class="card notice error" role="alert" {
            p lang="ja" { (ja) }
            p lang="en" { (en) }
            p class="code" { (code) }
        }
        p { a href={ "/ops" (lang.query()) } { (lang.t("ダッシュボードへ戻る", "Back to the dashboard")) } }
    };
    page(lang, notice_title(lang), "/ops", body)
}
