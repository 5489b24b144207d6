//! The pages' language: Japanese first, English with `?lang=en`, and the
//! link to the same page in the other language. The pages themselves are
//! in [`crate::views`].

use crate::reason::Reason;

/// The page language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lang {
    Ja,
    En,
}

impl Lang {
    pub(crate) fn from_query(q: Option<&str>) -> Lang {
        let lang = q.and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "lang")
                .map(|(_, v)| v.into_owned())
        });
        match lang.as_deref() {
            Some("en") => Lang::En,
            _ => Lang::Ja,
        }
    }

    pub(crate) fn t(self, ja: &'static str, en: &'static str) -> &'static str {
        match self {
            Lang::Ja => ja,
            Lang::En => en,
        }
    }

    pub(crate) fn code(self) -> &'static str {
        self.t("ja", "en")
    }

    /// `?lang=en` for English links, nothing for Japanese.
    pub(crate) fn query(self) -> &'static str {
        self.t("", "?lang=en")
    }

    pub(crate) fn reason(self, r: Reason) -> &'static str {
        self.t(r.ja(), r.en())
    }
}

/// The same path and query in the other language.
pub(crate) fn switch_link(path: &str, query: Option<&str>, lang: Lang) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    if let Some(q) = query {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            if k != "lang" {
                ser.append_pair(&k, &v);
            }
        }
    }
    if lang == Lang::Ja {
        ser.append_pair("lang", "en");
    }
    let q = ser.finish();
    if q.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{q}")
    }
}
