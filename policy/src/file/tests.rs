//! Policy files: round trips and `policy check` diagnostics with lines.

use super::*;
use crate::default::default_policy_toml;

#[test]
fn line_col_counts_characters() {
    let t = "a = 1\nb = \"機密\"\nc";
    assert_eq!(line_col(t, 0), (1, 1));
    assert_eq!(line_col(t, 6), (2, 1));
    assert_eq!(line_col(t, t.find('c').unwrap()), (3, 1));
    let after = t.find('密').unwrap() + '密'.len_utf8();
    assert_eq!(line_col(t, after), (2, 8));
    assert_eq!(line_col(t, 10_000), (3, 2));
}

#[test]
fn segments_parse() {
    let s = segments("rules[2].departments[0]");
    assert!(matches!(
        s[..],
        [
            Seg::Key("rules"),
            Seg::Index(2),
            Seg::Key("departments"),
            Seg::Index(0)
        ]
    ));
}

/// Line (1-based) of the first line containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

fn one_error(text: &str) -> Diagnostic {
    let d = check(text);
    let errors: Vec<_> = d.iter().filter(|d| d.severity == Severity::Error).collect();
    assert_eq!(errors.len(), 1, "{d:#?}");
    let e = errors[0].clone();
    match Policy::from_toml(text) {
        Err(PolicyError::Invalid { diagnostics }) => assert_eq!(diagnostics, vec![e.clone()]),
        other => panic!("{other:?}"),
    }
    e
}

#[test]
fn unknown_level_names_field_and_line() {
    let text = default_policy_toml().replacen("levels = [2]", "levels = [2, 4]", 1);
    let e = one_error(&text);
    assert_eq!(e.line, line_of(&text, "levels = [2, 4]"));
    assert_eq!(e.col, "levels = [2, ".len() + 1);
    assert_eq!(e.field, "rules[2].levels[1]");
    assert!(e.message.contains("unknown confidentiality level 4"), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("line {}, column", e.line)),
        "{e}"
    );
}

#[test]
fn duplicate_rule_id_points_at_the_second() {
    let text = default_policy_toml().replacen("id = \"l2-mobile\"", "id = \"l2-home\"", 1);
    let e = one_error(&text);
    assert_eq!(e.field, "rules[3].id");
    // The second occurrence of `id = "l2-home"`.
    let second = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("id = \"l2-home\""))
        .nth(1)
        .unwrap()
        .0
        + 1;
    assert_eq!(e.line, second);
    assert!(e.message.contains("duplicate rule id"), "{e}");
}

#[test]
fn typo_in_controls_is_an_error_not_ignored() {
    let text = default_policy_toml().replacen("printer = true", "printr = true", 1);
    let e = one_error(&text);
    assert_eq!(e.line, line_of(&text, "printr = true"));
    assert_eq!(e.col, 1);
    assert_eq!(e.field, "rules[0].controls.printr");
    assert!(e.message.contains("unknown field `printr`"), "{e}");
}

#[test]
fn bad_values_each_name_their_field() {
    for (from, to, field, msg) in [
        (
            "effect = \"deny\"",
            "effect = \"maybe\"",
            "rules[1].effect",
            "unknown variant",
        ),
        (
            "classes = [\"satellite\"]",
            "classes = [\"office\"]",
            "rules[0].classes[0]",
            "unknown variant",
        ),
        (
            "start = \"08:30\"",
            "start = \"8:30\"",
            "work_hours.start",
            "invalid time of day",
        ),
        (
            "end = \"17:15\"",
            "end = \"08:00\"",
            "work_hours.end",
            "not after start",
        ),
        (
            "timezone = \"+09:00\"",
            "timezone = \"Europe/Paris\"",
            "timezone",
            "invalid timezone",
        ),
        (
            "version = 1",
            "version = 2",
            "version",
            "unsupported policy format version",
        ),
        (
            "mfa_max_age_mins = 600       #",
            "mfa_max_age_mins = 0 #",
            "rules[2].mfa_max_age_mins",
            "at least 1",
        ),
        (
            "id = \"l1-home\"",
            "id = \"l1 home\"",
            "rules[5].id",
            "invalid rule id",
        ),
    ] {
        let text = default_policy_toml().replacen(from, to, 1);
        assert_ne!(text, default_policy_toml(), "{from}");
        let e = one_error(&text);
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(msg), "{e}");
        let needle = to.split('#').next().unwrap().trim();
        assert_eq!(e.line, line_of(&text, needle), "{e}");
    }
}

#[test]
fn missing_field_points_at_the_rule_header() {
    let text = "version = 1\n\n[[rules]]\nid = \"a\"\nclasses = [\"home\"]\neffect = \"deny\"\n";
    let e = one_error(text);
    assert_eq!((e.line, e.col), (3, 1));
    assert_eq!(e.field, "rules[0]");
    assert!(e.message.contains("missing field `levels`"), "{e}");
}

#[test]
fn syntax_errors_have_lines() {
    let text = "version = 1\n[[rules]]\nid = \"a\"\nlevels = [1\nclasses = [\"home\"]\n";
    let d = check(text);
    assert!(!d.is_empty());
    assert!(
        d.iter()
            .all(|d| d.severity == Severity::Error && d.line >= 4),
        "{d:#?}"
    );
    assert!(Policy::from_toml(text).is_err());
}

#[test]
fn several_semantic_errors_are_all_reported_in_file_order() {
    let text = "[[rules]]\nid = \"a\"\nlevels = []\nclasses = [\"home\"]\neffect = \"allow\"\n\n[[rules]]\nid = \"a\"\nlevels = [1]\nclasses = []\neffect = \"deny\"\ndepartments = []\n";
    let d = check(text);
    let fields: Vec<(&str, usize)> = d.iter().map(|d| (d.field.as_str(), d.line)).collect();
    assert_eq!(
        fields,
        vec![
            ("rules[0].levels", 3),
            ("rules[1].id", 8),
            ("rules[1].classes", 10),
            ("rules[1].departments", 12),
        ],
        "{d:#?}"
    );
}

#[test]
fn warnings_do_not_fail() {
    let text = "[[rules]]\nid = \"a\"\nlevels = [1, 3]\nclasses = [\"home\"]\neffect = \"allow\"\n\n[[rules]]\nid = \"b\"\nlevels = [1]\nclasses = [\"home\"]\neffect = \"deny\"\n";
    let d = check(text);
    assert_eq!(d.len(), 2, "{d:#?}");
    assert!(d.iter().all(|d| d.severity == Severity::Warning));
    assert_eq!((d[0].field.as_str(), d[0].line), ("rules[0].step_up", 1));
    assert_eq!((d[1].field.as_str(), d[1].line), ("rules[1].id", 8));
    assert!(d[1].message.contains("never applies"));
    let p = Policy::from_toml(text).unwrap();
    assert_eq!(p.rules.len(), 2);
    // Omitted fields take the safe defaults.
    assert_eq!(p.rules[0].hours, crate::rules::Hours::WorkHours);
    assert_eq!(p.rules[0].controls, crate::rules::Controls::default());
    assert_eq!(p.work_hours, WorkHours::default());
    assert_eq!(p.bcp_default_relax, BcpRelax::default());
}

#[test]
fn programmatic_validation_names_fields() {
    let mut p = Policy::default();
    p.rules[4].id = p.rules[0].id.clone();
    match p.validate() {
        Err(PolicyError::Invalid { diagnostics }) => {
            assert_eq!(diagnostics.len(), 1);
            assert_eq!(diagnostics[0].field, "rules[4].id");
            assert_eq!(diagnostics[0].line, 0);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_file_is_a_valid_deny_everything_policy() {
    let p = Policy::from_toml("").unwrap();
    assert!(p.rules.is_empty());
    assert_eq!(p.timezone.whole_hours(), 9);
}
