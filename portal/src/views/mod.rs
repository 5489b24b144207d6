//! Every HTML page of the portal, one file per page, written with maud:
//! templates checked at compile time that escape every value they splice
//! in, text and attributes alike. Nothing here reads the store, the
//! session or the clock: a handler decides (sign-in, roles, CSRF, store
//! calls) and hands a view plain data (store rows, formatted times,
//! links), and the view returns [`maud::Markup`], which is an axum
//! response (`text/html; charset=utf-8`) on its own or with a status.
//!
//! The pages keep to the Content-Security-Policy: no inline script or
//! style, only `/assets/…`; a script's texts go in `data-msg-*`
//! attributes. Every form that posts carries the session's CSRF token in
//! a hidden `csrf` field ([`parts::csrf_input`]).
//!
//! Views depend on [`crate::html::Lang`], [`crate::reason`] and the
//! store's types only, never on the handlers that call them.

pub(crate) mod bcp_banner;
pub(crate) mod dashboard;
pub(crate) mod enroll;
pub(crate) mod home;
pub(crate) mod layout;
pub(crate) mod login;
pub(crate) mod me;
pub(crate) mod notice;
pub(crate) mod officer;
pub(crate) mod officer_bcp;
pub(crate) mod officer_desks;
pub(crate) mod officer_devices;
pub(crate) mod officer_rules;
pub(crate) mod parts;
pub(crate) mod plans;
pub(crate) mod sign_in;

#[cfg(test)]
mod tests {
    use crate::html::Lang;

    #[test]
    fn spliced_values_are_escaped_in_text_and_attributes() {
        let hostile = r#""><script>alert(1)</script>&"#;
        let escaped = "&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&amp;";
        let page =
            super::sign_in::sign_in_page(Lang::En, hostile, hostile, Some(hostile)).into_string();
        assert!(!page.contains("<script>"), "{page}");
        assert!(
            page.contains(&format!(r#"data-next="{escaped}""#)),
            "{page}"
        );
        assert!(
            page.contains(&format!(r#"<a class="lang" href="{escaped}""#)),
            "{page}"
        );
        assert!(page.contains(&format!("<h1>{escaped}</h1>")), "{page}");
        // The frame's one unescaped piece: the constant banner slot.
        assert_eq!(page.matches(super::layout::BANNER_SLOT).count(), 1);
        assert!(
            page.starts_with("<!DOCTYPE html><html lang=\"en\">"),
            "{page}"
        );
    }
}
