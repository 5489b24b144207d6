//! `GET /enroll`: user id and one-time enrollment code, then the portal
//! script registers the security key.

use maud::{html, Markup};

use super::layout::page;
use super::parts::ScriptMessages;
use crate::html::Lang;

/// The enrollment page.
pub(crate) fn enroll(lang: Lang, switch: &str) -> Markup {
    let m = ScriptMessages::new(lang);
    let body = html! {
        p class="lead" {
            (lang.t(
                "担当者から受け取った利用者IDと登録コードを入力し、セキュリティキー（または Windows Hello などの生体認証）を登録します。",
                "Enter your user ID and the enrollment code the officer gave you, then register your security key (or Windows Hello and similar)."
            ))
        }
        form id="enroll-form" class="card" data-portal="enroll" data-lang=(lang.code())
            data-msg-touch=(m.touch)
            data-msg-cancelled=(m.cancelled)
            data-msg-unsupported=(m.unsupported)
            data-msg-failed=(m.failed)
            data-msg-enrolled=(m.enrolled)
            data-msg-redirecting=(m.redirecting)
            data-msg-returned=(m.returned)
        {
            label for="user" { (lang.t("利用者ID", "User ID")) }
            input id="user" name="user" autocomplete="username" required maxlength="64"
                pattern="[A-Za-z0-9._\\-]+" spellcheck="false" autocapitalize="off";
            label for="code" { (lang.t("登録コード", "Enrollment code")) }
            input id="code" name="code" autocomplete="one-time-code" required maxlength="40"
                placeholder="XXXX-XXXX-XXXX-XXXX" spellcheck="false" autocapitalize="characters";
            p class="field-hint" {
                (lang.t(
                    "登録コードは一度だけ使えます。有効期限があります。",
                    "The code works once and expires."
                ))
            }
            button type="submit" { (lang.t("セキュリティキーを登録する", "Register security key")) }
            p id="status" class="status" role="status" aria-live="polite" hidden {}
        }
        ol class="steps" {
            li { (lang.t("ボタンを押すと、ブラウザーが本人確認を求めます。", "After you press the button, the browser asks you to verify.")) }
            li { (lang.t("セキュリティキーに触れるか、PIN・指紋・顔で確認します。", "Touch the key, or confirm with PIN, fingerprint or face.")) }
            li { (lang.t("「登録しました」と表示されたら完了です。", "When “Enrolled” appears, you are done.")) }
        }
    };
    page(
        lang,
        lang.t("セキュリティキーの登録", "Enroll a security key"),
        switch,
        body,
    )
}
