//! `GET /officer/devices`: the loaned devices with block and unblock
//! forms, and the portal lockouts in force with unlock forms.

use kakehashi_store::{Device, DeviceStatus};
use maud::{html, Markup};

use super::officer::{officer_page, row_reason, Head};
use super::parts::{class_name, csrf_input, options, status_name};
use crate::html::Lang;

/// The page title.
pub(crate) fn title(lang: Lang) -> &'static str {
    lang.t("端末（利用停止）", "Devices (block)")
}

/// A lockout in force.
#[derive(Debug)]
pub(crate) struct Lock {
    pub(crate) user: String,
    /// The address it holds for; none: the user everywhere.
    pub(crate) from: Option<String>,
    /// Minutes until it ends.
    pub(crate) minutes: i64,
}

/// The devices page; `locks` is none when they could not be read.
pub(crate) fn devices(
    lang: Lang,
    switch: &str,
    head: Head<'_>,
    list: &[Device],
    locks: Option<&[Lock]>,
) -> Markup {
    let lead = lang.t(
        "貸与端末の一覧です。利用停止にすると、その端末のログインはすべて失効し、接続中のセッションは1秒以内に終了します。紛失・盗難のときは、証明書の失効（kakehashi-pki revoke）も行ってください。",
        "The loaned devices. Blocking one revokes all its logins and ends its live sessions within a second. For a lost or stolen device, also revoke its certificate (kakehashi-pki revoke).",
    );
    let content = html! {
        @if list.is_empty() {
            p class="muted" {
                (lang.t(
                    "登録された端末はありません（初回ログイン時に登録されます）。",
                    "No devices yet (a device registers at its first login)."
                ))
            }
        } @else {
            table id="devices" {
                thead { tr {
                    th { (lang.t("端末", "Device")) }
                    th { (lang.t("区分", "Class")) }
                    th { (lang.t("状態", "Status")) }
                    th { (lang.t("貸与先", "Loaned to")) }
                    th { (lang.t("操作", "Action")) }
                } }
                tbody {
                    @for d in list {
                        tr data-device=(d.id) {
                            td { (d.id) }
                            td { (class_name(lang, d.class)) }
                            td class={ "st-" (d.status.as_str()) } { (status_name(lang, d.status)) }
                            td { (d.loaned_to.as_deref().unwrap_or("-")) }
                            td { (action(lang, head.csrf, d)) }
                        }
                    }
                }
            }
        }
        @if let Some(locks) = locks {
            (locks_section(lang, head.csrf, locks))
        }
    };
    officer_page(lang, title(lang), switch, head, lead, content)
}

/// Block an active device, unblock a blocked one.
fn action(lang: Lang, csrf: &str, d: &Device) -> Markup {
    let lq = lang.query();
    let reason_l = lang.t("理由（必須）", "Reason (required)");
    html! {
        @match d.status {
            DeviceStatus::Active => {
                form method="post" action={ "/officer/devices/block" (lq) } class="row-form" {
                    (csrf_input(csrf))
                    input type="hidden" name="id" value=(d.id);
                    select name="status" aria-label=(lang.t("状態", "Status")) {
                        (options(
                            &[
                                ("blocked", lang.t("利用停止", "blocked")),
                                ("lost", lang.t("紛失届出", "reported lost")),
                            ],
                            "blocked",
                        ))
                    }
                    (row_reason(reason_l))
                    button type="submit" class="danger" { (lang.t("利用停止", "Block")) }
                }
            }
            DeviceStatus::Blocked | DeviceStatus::Lost => {
                form method="post" action={ "/officer/devices/unblock" (lq) } class="row-form" {
                    (csrf_input(csrf))
                    input type="hidden" name="id" value=(d.id);
                    (row_reason(reason_l))
                    button type="submit" class="small" { (lang.t("利用再開", "Unblock")) }
                }
            }
            // A revoked certificate is not undone here.
            _ => {
                span class="muted" { (lang.t("証明書失効済み", "certificate revoked")) }
            }
        }
    }
}

/// The portal lockouts in force, each with an unlock form.
fn locks_section(lang: Lang, csrf: &str, locks: &[Lock]) -> Markup {
    let reason_l = lang.t("理由（必須）", "Reason (required)");
    html! {
        h2 { (lang.t("ロック中の利用者", "Locked-out users")) }
        p class="muted" {
            (lang.t(
                "ログインの失敗が続いてロックされている利用者と接続元です。本人の失敗と確かめたうえで解除してください（解除は監査ログに残ります）。",
                "Users (and the addresses) locked after repeated failed sign-ins. Unlock after checking with the person that the failures were theirs (the unlock is audited)."
            ))
        }
        @if locks.is_empty() {
            p class="muted" id="no-locks" { (lang.t("ロック中の利用者はいません。", "No one is locked out.")) }
        } @else {
            table id="locks" {
                thead { tr {
                    th { (lang.t("利用者", "User")) }
                    th { (lang.t("接続元", "From")) }
                    th { (lang.t("解除まで", "Lock ends in")) }
                    th { (lang.t("操作", "Action")) }
                } }
                tbody {
                    @for l in locks {
                        tr data-lock-user=(l.user) {
                            td { (l.user) }
                            td {
                                @match &l.from {
                                    Some(ip) => (ip),
                                    None => (lang.t("全体（複数の接続元）", "everywhere (several addresses)")),
                                }
                            }
                            td { (l.minutes) " " (lang.t("分", "min")) }
                            td {
                                form method="post" action={ "/officer/users/unlock" (lang.query()) } class="row-form" {
                                    (csrf_input(csrf))
                                    input type="hidden" name="id" value=(l.user);
                                    (row_reason(reason_l))
                                    button type="submit" class="small" { (lang.t("ロック解除", "Unlock")) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
