//! `GET /me` signed in: the user, their loaned devices, their sign-ins per
//! device (each live one with "sign out this device") and their keys.

use kakehashi_store::{Device, User};
use maud::{html, Markup};

use super::layout::page;
use super::parts::{class_name, csrf_input, status_name};
use crate::html::Lang;

/// The page title.
pub(crate) fn title(lang: Lang) -> &'static str {
    lang.t("自分の端末とログイン", "My devices and sessions")
}

/// Everything the page shows.
#[derive(Debug)]
pub(crate) struct Me<'a> {
    /// The session's CSRF token.
    pub(crate) csrf: &'a str,
    /// The user as the store has them (none: deleted since sign-in).
    pub(crate) user: Option<&'a User>,
    pub(crate) devices: &'a [Device],
    pub(crate) sign_ins: Vec<SignIn>,
    pub(crate) keys: Vec<Key>,
}

/// One login token of the user.
#[derive(Debug)]
pub(crate) struct SignIn {
    pub(crate) device: String,
    /// Local time.
    pub(crate) issued: String,
    /// Local time.
    pub(crate) expires: String,
    pub(crate) state: SignInState,
    /// The token's hash in hex (what "sign out this device" posts).
    pub(crate) token_hash: String,
}

/// Whether a login token still works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SignInState {
    SignedOut,
    Expired,
    Live,
}

/// One registered security key.
#[derive(Debug)]
pub(crate) struct Key {
    /// The credential id as shown (base64url).
    pub(crate) label: String,
    /// Local time.
    pub(crate) registered: String,
    /// Local time.
    pub(crate) last_used: Option<String>,
    pub(crate) attested: bool,
}

/// The signed-in page; `switch` is the same page in the other language.
pub(crate) fn me(lang: Lang, switch: &str, me: &Me<'_>) -> Markup {
    let lq = lang.query();
    let body = html! {
        @if let Some(u) = me.user {
            div class="card who" {
                p {
                    strong { (u.name) } " " (lang.t("さん", "")) " "
                    span class="muted" { "(" (u.id) " · " (u.department) ")" }
                }
                form method="post" action={ "/me/logout" (lq) } class="inline" {
                    (csrf_input(me.csrf))
                    button type="submit" class="secondary" { (lang.t("ポータルからログアウト", "Sign out of the portal")) }
                }
            }
        }

        h2 { (lang.t("貸与端末", "Loaned devices")) }
        @if me.devices.is_empty() {
            p class="muted" { (lang.t("貸与端末はありません。", "No devices are loaned to you.")) }
        } @else {
            table {
                thead { tr {
                    th { (lang.t("端末", "Device")) }
                    th { (lang.t("種別", "Class")) }
                    th { (lang.t("状態", "Status")) }
                } }
                tbody {
                    @for d in me.devices {
                        tr {
                            td { (d.id) }
                            td { (class_name(lang, d.class)) }
                            td class={ "st-" (d.status.as_str()) } { (status_name(lang, d.status)) }
                        }
                    }
                }
            }
        }

        h2 { (lang.t("ログイン（端末ごと）", "Sign-ins (per device)")) }
        @if me.sign_ins.is_empty() {
            p class="muted" { (lang.t("ログインの記録はありません。", "No sign-ins yet.")) }
        } @else {
            table {
                thead { tr {
                    th { (lang.t("端末", "Device")) }
                    th { (lang.t("ログイン日時", "Signed in")) }
                    th { (lang.t("有効期限", "Expires")) }
                    th { (lang.t("状態", "State")) }
                    th {}
                } }
                tbody {
                    @for t in &me.sign_ins {
                        tr {
                            td { (t.device) }
                            td { (t.issued) }
                            td { (t.expires) }
                            td {
                                (match t.state {
                                    SignInState::SignedOut => lang.t("サインアウト済み", "signed out"),
                                    SignInState::Expired => lang.t("期限切れ", "expired"),
                                    SignInState::Live => lang.t("有効", "active"),
                                })
                            }
                            td {
                                @if t.state == SignInState::Live {
                                    form method="post" action={ "/me/revoke" (lq) } class="inline" {
                                        (csrf_input(me.csrf))
                                        input type="hidden" name="token" value=(t.token_hash);
                                        button type="submit" class="danger" { (lang.t("この端末をサインアウト", "Sign out this device")) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }

        h2 { (lang.t("登録済みのセキュリティキー", "Registered security keys")) }
        @if me.keys.is_empty() {
            p class="muted" { (lang.t("登録されたキーはありません。", "No keys registered.")) }
        } @else {
            table {
                thead { tr {
                    th { (lang.t("キーID", "Key ID")) }
                    th { (lang.t("登録日時", "Registered")) }
                    th { (lang.t("最終使用", "Last used")) }
                    th { (lang.t("種類", "Kind")) }
                } }
                tbody {
                    @for k in &me.keys {
                        @let short: String = k.label.chars().take(12).collect();
                        tr {
                            td { code title=(k.label) { (short) "…" } }
                            td { (k.registered) }
                            td { (k.last_used.as_deref().unwrap_or("-")) }
                            td {
                                @if k.attested {
                                    (lang.t("認定ハードウェアキー", "attested hardware key"))
                                } @else {
                                    (lang.t("一般", "standard"))
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(lang, title(lang), switch, body)
}
