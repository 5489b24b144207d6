//! The officer pages and telework plans in a real browser (Debian's
//! chromium through `tests/browser/portal.mjs`), against a real gateway
//! whose portal is on `http://localhost`: an officer enrolled through the
//! browser edits a rule, sees the live preview turn from allow to deny,
//! saves with a reason, and the store's audit log, `policy export` and the
//! running gateway all have the new version; a staff member gets 403 on the
//! officer pages; a section chief approves a staff member's plan.
//!
//! A screenshot of the rules page with the preview is left at
//! `target/screenshots/officer-rules-preview.png` (the path is printed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kakehashi_store::{PlanStatus, Store};
use kakehashi_tests::*;
use serde_json::json;

use super::browser::{admin, enroll_in_browser, prerequisites, start_portal_gateway, Browser};

const OFFICER: &str = "officer-sato";
const STAFF: &str = "staff-yamada";
const CHIEF: &str = "chief-tanaka";
const REASON: &str = "情報セキュリティ委員会の決定（サテライトのレベル2を停止）";

fn screenshot_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).expect("create target/screenshots");
    dir.join("officer-rules-preview.png")
}

/// `kakehashi-gateway policy export --config CFG`.
async fn policy_export(config: &Path) -> String {
    let out = command(bin("kakehashi-gateway"))
        .args(["policy", "export", "--config"])
        .arg(config)
        .output()
        .await
        .expect("run policy export");
    assert!(
        out.status.success(),
        "policy export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn officer_edits_rules_with_live_preview_and_chief_approves_a_plan_in_chromium() {
    let chromium = prerequisites();
    let pki = Pki::new();
    let db = pki.path().join("kakehashi.db");
    // The shipped default policy (version 1 at the first start).
    let pg = start_portal_gateway(&pki, store_sections(&db)).await;
    let (gw, portal) = (pg.gw, pg.portal);
    let config = gw.config.clone();
    for (id, name, dept, role) in [
        (OFFICER, "佐藤 一郎", "情報政策課", "officer"),
        (STAFF, "山田 花子", "総務課", "staff"),
        (CHIEF, "田中 課長", "総務課", "chief"),
    ] {
        admin(
            &config,
            &[
                "user", "add", "--id", id, "--name", name, "--dept", dept, "--role", role,
            ],
        )
        .await;
    }
    let store = Store::open(db.to_str().unwrap()).await.unwrap();
    assert_eq!(store.current_policy().await.unwrap().unwrap().version, 1);

    let mut browser = Browser::start(&chromium, pki.path().join("browser.log"))
        .await
        .unwrap();
    for user in [OFFICER, STAFF, CHIEF] {
        let e = enroll_in_browser(&mut browser, &config, &portal, user).await;
        assert!(
            e["status"].as_str().unwrap().starts_with("登録しました"),
            "{e}"
        );
    }

    // The officer signs in on the rules page itself and lands back on it.
    let p = browser
        .ask(json!({ "cmd": "portal_login", "url": format!("{portal}/officer/rules"), "user": OFFICER }))
        .await
        .unwrap();
    assert_eq!(p["status"], 200, "{p}");
    assert_eq!(p["lang"], "ja", "{p}");
    assert_eq!(p["title"], "ルール（アクセスポリシー）", "{p}");
    assert_eq!(p["path"], "/officer/rules", "{p}");
    assert!(
        p["text"].as_str().unwrap().contains("適用中: バージョン 1"),
        "{p}"
    );

    // A level-2 desk from a satellite office, a Thursday morning: allowed.
    for (sel, value) in [
        ("#wi-level", "2"),
        ("#wi-class", "satellite"),
        ("#wi-segment", "lgwan"),
        ("#wi-plan", "none"),
    ] {
        browser
            .ask(json!({ "cmd": "select", "selector": sel, "value": value }))
            .await
            .unwrap();
    }
    for (sel, value) in [
        ("#wi-date", "2026-01-15"),
        ("#wi-time", "10:00"),
        ("#wi-mfa", "30"),
    ] {
        browser
            .ask(json!({ "cmd": "fill", "selector": sel, "value": value }))
            .await
            .unwrap();
    }
    // The page shows a preview of its defaults (a home terminal, today)
    // before the inputs above reach it: wait for the one they ask for.
    browser
        .ask(json!({ "cmd": "wait", "selector": "#preview-rule:text-is(\"l2-satellite\")" }))
        .await
        .unwrap();
    let before = browser
        .ask(json!({ "cmd": "wait", "selector": "#preview-decision[data-allow=\"true\"]" }))
        .await
        .unwrap();
    assert!(
        before["text"].as_str().unwrap().starts_with("許可"),
        "{before}"
    );
    let rule = browser
        .ask(json!({ "cmd": "text", "selector": "#preview-rule" }))
        .await
        .unwrap();
    assert_eq!(rule["text"], "l2-satellite", "{rule}");
    let diags = browser
        .ask(json!({ "cmd": "text", "selector": "#preview-diags" }))
        .await
        .unwrap();
    assert!(
        diags["text"].as_str().unwrap().starts_with("エラーなし"),
        "{diags}"
    );

    // The officer turns l2-satellite into a deny: the preview follows.
    browser
        .ask(json!({ "cmd": "edit", "selector": "#policy-text",
                     "after": "id = \"l2-satellite\"", "from": "effect = \"allow\"", "to": "effect = \"deny\"" }))
        .await
        .unwrap();
    let after = browser
        .ask(json!({ "cmd": "wait", "selector": "#preview-decision[data-allow=\"false\"]" }))
        .await
        .unwrap();
    let after_text = after["text"].as_str().unwrap();
    assert!(after_text.starts_with("拒否"), "{after}");
    let reason = browser
        .ask(json!({ "cmd": "text", "selector": "#preview-reason" }))
        .await
        .unwrap();
    assert_eq!(reason["text"], "level_not_permitted", "{reason}");
    let rule = browser
        .ask(json!({ "cmd": "text", "selector": "#preview-rule" }))
        .await
        .unwrap();
    assert_eq!(rule["text"], "l2-satellite", "{rule}");
    let shot = screenshot_path();
    browser
        .ask(json!({ "cmd": "screenshot", "path": shot }))
        .await
        .unwrap();
    eprintln!(
        "screenshot of the rules page with the preview: {}",
        shot.display()
    );

    // Saved with a reason: version 2 in force.
    browser
        .ask(json!({ "cmd": "fill", "selector": "#reason", "value": REASON }))
        .await
        .unwrap();
    let saved = browser
        .ask(json!({ "cmd": "submit", "selector": "#save" }))
        .await
        .unwrap();
    assert_eq!(saved["status"], 200, "{saved}");
    assert_eq!(saved["path"], "/officer/rules?saved=2", "{saved}");
    let text = saved["text"].as_str().unwrap();
    assert!(
        text.contains("バージョン 2 を保存し、適用しました")
            && text.contains("適用中: バージョン 2"),
        "{saved}"
    );

    let log = store.audit_page(0, 10_000).await.unwrap();
    let rec = log
        .iter()
        .rev()
        .find(|r| r.action == "policy.import")
        .expect("a policy.import audit record");
    assert_eq!(rec.actor, format!("user:{OFFICER}"));
    assert_eq!(rec.reason, REASON);
    assert_eq!(rec.subject, "policy");
    let doc = store.current_policy().await.unwrap().unwrap();
    assert_eq!((doc.version, doc.author.as_str()), (2, "user:officer-sato"));
    let exported = policy_export(&config).await;
    assert_eq!(exported, doc.text);
    let at = exported.find("id = \"l2-satellite\"").unwrap();
    let effect = exported[at..]
        .lines()
        .find(|l| l.starts_with("effect"))
        .unwrap();
    assert_eq!(effect, "effect = \"deny\"");
    assert!(!exported.contains('\r'), "stored with LF line ends");
    // The running gateway put it in force from its audit feed.
    gw.proc
        .wait_log("New access policy in force", Duration::from_secs(10))
        .await
        .unwrap();

    // Staff: 403 on the officer pages, in Japanese and English.
    browser
        .ask(json!({ "cmd": "clear_cookies" }))
        .await
        .unwrap();
    let denied = browser
        .ask(json!({ "cmd": "portal_login", "url": format!("{portal}/officer/rules"), "user": STAFF }))
        .await
        .unwrap();
    assert_eq!(denied["status"], 403, "{denied}");
    let t = denied["text"].as_str().unwrap();
    assert!(
        t.contains("情報セキュリティ担当（officer）の役割を持つ職員だけが利用できます")
            && t.contains("This page is only for staff with the security officer role")
            && t.contains("role_required"),
        "{denied}"
    );
    let d = browser
        .ask(json!({ "cmd": "open", "url": format!("{portal}/officer/devices") }))
        .await
        .unwrap();
    assert_eq!(d["status"], 403, "{d}");

    // Staff submit a plan for tomorrow (the form's default date).
    let p = browser
        .ask(json!({ "cmd": "open", "url": format!("{portal}/plans") }))
        .await
        .unwrap();
    assert_eq!(
        (p["status"].as_u64(), p["title"].as_str()),
        (Some(200), Some("テレワーク計画")),
        "{p}"
    );
    browser
        .ask(json!({ "cmd": "fill", "selector": "#plan-start", "value": "09:00" }))
        .await
        .unwrap();
    let sent = browser
        .ask(json!({ "cmd": "submit", "selector": "#plan-submit" }))
        .await
        .unwrap();
    assert!(
        sent["text"]
            .as_str()
            .unwrap()
            .contains("計画を提出しました"),
        "{sent}"
    );
    let plans = store.plans_for_user(STAFF).await.unwrap();
    assert_eq!(plans.len(), 1, "{plans:?}");
    let plan = &plans[0];
    assert_eq!(
        (plan.start_min, plan.end_min, plan.status),
        (540, 1035, PlanStatus::Submitted)
    );

    // The chief of the same department approves it.
    browser
        .ask(json!({ "cmd": "clear_cookies" }))
        .await
        .unwrap();
    let c = browser
        .ask(json!({ "cmd": "portal_login", "url": format!("{portal}/plans"), "user": CHIEF }))
        .await
        .unwrap();
    assert_eq!(c["status"], 200, "{c}");
    assert!(
        c["text"]
            .as_str()
            .unwrap()
            .contains("総務課 の承認待ちの計画"),
        "{c}"
    );
    let row = format!("tr[data-plan=\"{}\"]", plan.id);
    browser
        .ask(json!({ "cmd": "fill", "selector": format!("{row} input[name=reason]"), "value": "業務上の支障なし" }))
        .await
        .unwrap();
    let ok = browser
        .ask(json!({ "cmd": "submit", "selector": format!("{row} button[value=approve]") }))
        .await
        .unwrap();
    assert!(
        ok["text"].as_str().unwrap().contains("計画を承認しました"),
        "{ok}"
    );
    let plan = store.get_plan(&plan.id).await.unwrap().unwrap();
    assert_eq!(plan.status, PlanStatus::Approved);
    assert_eq!(plan.decided_by.as_deref(), Some("user:chief-tanaka"));
    browser.quit().await;

    let log = store.audit_page(0, 10_000).await.unwrap();
    assert!(log.iter().any(|r| r.action == "plan.submit"
        && r.actor == format!("user:{STAFF}")
        && r.subject == STAFF));
    assert!(log.iter().any(|r| r.action == "plan.approve"
        && r.actor == format!("user:{CHIEF}")
        && r.subject == plan.id
        && r.reason == "業務上の支障なし"));
    assert!(store.verify_audit().await.unwrap().is_intact());
}
