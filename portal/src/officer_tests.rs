//! The officer and plan pages in process: roles, CSRF and origin checks,
//! the same validation and audit records as the CLI, the BCP banner.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use kakehashi_store::{
    Audit, AuditRecord, DeviceClass, DeviceSpec, DeviceStatus, Hash256, NewLoginToken, NewUser,
    PlanSpec, PlanStatus, Role, Segment, Store,
};
use serde_json::{json, Value};
use tower::ServiceExt as _;

use super::*;
use crate::state::*;

const ORIGIN: &str = "https://portal.example.test";
const COOKIE: &str = "__Host-kakehashi-session";

struct H {
    _dir: tempfile::TempDir,
    store: Store,
    state: PortalState,
    app: Router,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The CSRF token of the page's forms.
    fn csrf(&self) -> String {
        let at = self
            .text
            .find(r#"name="csrf" value=""#)
            .expect("a csrf field")
            + 19;
        self.text[at..].split('"').next().unwrap().to_owned()
    }
}

impl H {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cfg = PortalConfig::for_tests(ORIGIN);
        let store = Store::open(dir.path().join("store.db").to_str().unwrap())
            .await
            .unwrap();
        let state = PortalState::new(&cfg, store.clone(), None).unwrap();
        let app = router(state.clone());
        store
            .put_policy(
                kakehashi_policy::default_policy_toml(),
                Audit::new(0, "gateway", "policy.import").subject("policy"),
            )
            .await
            .unwrap();
        H {
            _dir: dir,
            store,
            state,
            app,
        }
    }

    async fn user(&self, id: &str, dept: &str, roles: &[Role]) {
        self.store
            .add_user(
                &NewUser {
                    id: id.into(),
                    name: format!("{id} さん"),
                    department: dept.into(),
                    roles: roles.iter().copied().collect::<BTreeSet<_>>(),
                },
                Audit::new(kakehashi_store::unix_now(), "cli:test", "user.add").subject(id),
            )
            .await
            .unwrap();
    }

    /// A portal session for `user`, as `/api/session/finish` makes one.
    async fn sign_in(&self, user: &str) -> String {
        let id = self.state.new_session(user).await.unwrap();
        format!("{COOKIE}={id}")
    }

    /// The CSRF token of the session in `cookie`, as its pages carry it.
    async fn csrf_of(&self, cookie: &str) -> String {
        let id = cookie.split_once('=').unwrap().1;
        self.state.session(id).await.unwrap().unwrap().csrf
    }

    async fn send(&self, req: Request<Body>) -> Answer {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str, cookie: Option<&str>) -> Answer {
        let mut r = Request::builder().uri(path);
        if let Some(c) = cookie {
            r = r.header(header::COOKIE, c);
        }
        self.send(r.body(Body::empty()).unwrap()).await
    }

    /// A form POST from the portal's origin.
    async fn post(&self, path: &str, cookie: &str, form: &[(&str, &str)]) -> Answer {
        self.post_from(path, cookie, Some(ORIGIN), form).await
    }

    async fn post_from(
        &self,
        path: &str,
        cookie: &str,
        origin: Option<&str>,
        form: &[(&str, &str)],
    ) -> Answer {
        let mut body = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in form {
            body.append_pair(k, v);
        }
        let mut r = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            r = r.header(header::ORIGIN, o);
        }
        self.send(r.body(Body::from(body.finish())).unwrap()).await
    }

    async fn preview(&self, cookie: &str, body: Value) -> Answer {
        let r = Request::builder()
            .method(Method::POST)
            .uri("/officer/rules/preview")
            .header(header::COOKIE, cookie)
            .header(header::ORIGIN, ORIGIN)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(r).await
    }

    async fn audit(&self) -> Vec<AuditRecord> {
        self.store.audit_page(0, 10_000).await.unwrap()
    }
}

fn l2_satellite_denied(text: &str) -> String {
    let at = text.find("id = \"l2-satellite\"").unwrap();
    let (head, tail) = text.split_at(at);
    format!(
        "{head}{}",
        tail.replacen("effect = \"allow\"", "effect = \"deny\"", 1)
    )
}

#[tokio::test]
async fn officer_pages_are_for_officers_only() {
    let h = H::new().await;
    h.user("officer1", "情報政策課", &[Role::Officer]).await;
    h.user("staff1", "総務課", &[Role::Staff]).await;

    // Not signed in: a sign-in form that comes back here.
    let a = h.get("/officer/rules", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text.contains(r#"data-mode="portal""#), "{}", a.text);
    assert!(
        a.text.contains(r#"data-next="/officer/rules""#),
        "{}",
        a.text
    );
    assert!(!a.text.contains("policy-text"));
    let a = h.get("/officer", None).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);

    // Staff: 403 in both languages, on every officer page and action.
    let staff = h.sign_in("staff1").await;
    for path in [
        "/officer/rules",
        "/officer/desks",
        "/officer/devices",
        "/officer/bcp",
        "/officer/rules?lang=en",
    ] {
        let a = h.get(path, Some(&staff)).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            a.text.contains("情報セキュリティ担当（officer）の役割")
                && a.text
                    .contains("only for staff with the security officer role")
                && a.text.contains("role_required"),
            "{path}: {}",
            a.text
        );
    }
    let a = h
        .preview(&staff, json!({ "csrf": "x", "text": "", "level": "2" }))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let v: Value = serde_json::from_str(&a.text).unwrap();
    assert_eq!(v["error"], "role_required");
    assert!(v["message_ja"].as_str().unwrap().contains("officer"));
    let a = h
        .post(
            "/officer/rules",
            &staff,
            &[("csrf", "x"), ("text", "x"), ("reason", "r")],
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    // The officer.
    let officer = h.sign_in("officer1").await;
    let a = h.get("/officer/rules", Some(&officer)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert!(a.text.contains(r#"<textarea id="policy-text""#));
    assert!(a.text.contains(r#"id="current-version" data-version="1""#));
    assert!(a.text.contains("l2-satellite"));
    assert!(a
        .text
        .contains(r#"<script src="/assets/officer.js" defer>"#));
    for path in ["/officer/desks", "/officer/devices", "/officer/bcp"] {
        assert_eq!(h.get(path, Some(&officer)).await.status, StatusCode::OK);
    }

    // A disabled officer is refused at the next click.
    h.store
        .set_user_disabled(
            "officer1",
            true,
            Audit::new(kakehashi_store::unix_now(), "cli:test", "user.disable").subject("officer1"),
        )
        .await
        .unwrap();
    let a = h.get("/officer/rules", Some(&officer)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn saving_rules_is_validated_csrf_checked_and_audited() {
    let h = H::new().await;
    h.user("officer1", "情報政策課", &[Role::Officer]).await;
    let officer = h.sign_in("officer1").await;
    let page = h.get("/officer/rules", Some(&officer)).await;
    let csrf = page.csrf();
    let default = kakehashi_policy::default_policy_toml();
    // As the browser sends a textarea: CRLF line ends.
    let edited = l2_satellite_denied(default).replace('\n', "\r\n");

    // The preview: allow before, deny after, for a level-2 satellite request.
    let what_if = |text: &str, csrf: &str| {
        json!({ "csrf": csrf, "text": text, "level": "2", "class": "satellite", "segment": "lgwan",
                "date": "2026-01-15", "time": "10:00", "plan": "none", "bcp": false, "dept": "", "mfa_age": 0 })
    };
    let a = h.preview(&officer, what_if(default, &csrf)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let v: Value = serde_json::from_str(&a.text).unwrap();
    assert_eq!(
        (&v["decision"]["allow"], &v["decision"]["rule"]),
        (&json!(true), &json!("l2-satellite"))
    );
    let v: Value =
        serde_json::from_str(&h.preview(&officer, what_if(&edited, &csrf)).await.text).unwrap();
    assert_eq!(v["decision"]["allow"], false, "{v}");
    assert_eq!(v["decision"]["reason"], "level_not_permitted");
    let a = h.preview(&officer, what_if(default, "forged")).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.text.contains("csrf_invalid"));

    let form = |csrf: &str, base: &str, text: &str, reason: &str| {
        [
            ("csrf", csrf.to_owned()),
            ("base_version", base.to_owned()),
            ("text", text.to_owned()),
            ("reason", reason.to_owned()),
        ]
    };
    let send = |f: [(&'static str, String); 4], origin: Option<&'static str>| {
        let officer = officer.clone();
        let h = &h;
        async move {
            let pairs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            h.post_from("/officer/rules", &officer, origin, &pairs)
                .await
        }
    };
    // No token, a forged token, no origin, a foreign origin: refused.
    let reason = "情報セキュリティ委員会 2026-01 決定";
    for (f, origin, code) in [
        (form("", "1", &edited, reason), Some(ORIGIN), "csrf_invalid"),
        (
            form("AAAA", "1", &edited, reason),
            Some(ORIGIN),
            "csrf_invalid",
        ),
        (form(&csrf, "1", &edited, reason), None, "csrf_invalid"),
        (
            form(&csrf, "1", &edited, reason),
            Some("https://evil.example"),
            "origin_mismatch",
        ),
    ] {
        let a = send(f, origin).await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
        assert!(a.text.contains(code), "{code}: {}", a.text);
    }
    // Without a reason; with an error in the policy; from a stale version.
    let a = send(form(&csrf, "1", &edited, "  "), Some(ORIGIN)).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert!(a.text.contains("理由を入力してください"));
    let broken = default.replacen("levels = [3]", "levels = [4]", 1);
    let a = send(form(&csrf, "1", &broken, reason), Some(ORIGIN)).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(a.text.contains("rules[0].levels[0]"), "{}", a.text);
    assert!(
        a.text.contains("levels = [4]"),
        "the officer's text is kept in the editor"
    );
    let a = send(form(&csrf, "0", &edited, reason), Some(ORIGIN)).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(h.store.current_policy().await.unwrap().unwrap().version, 1);

    // Saved.
    let a = send(form(&csrf, "1", &edited, reason), Some(ORIGIN)).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    assert_eq!(a.location(), "/officer/rules?saved=2");
    let doc = h.store.current_policy().await.unwrap().unwrap();
    assert_eq!(doc.version, 2);
    assert_eq!(doc.text, l2_satellite_denied(default), "stored with LF");
    assert_eq!(doc.author, "user:officer1");
    let log = h.audit().await;
    let rec = log
        .iter()
        .rev()
        .find(|r| r.action == "policy.import")
        .unwrap();
    assert_eq!(
        (
            rec.actor.as_str(),
            rec.reason.as_str(),
            rec.subject.as_str()
        ),
        ("user:officer1", reason, "policy")
    );
    let a = h.get("/officer/rules?saved=2", Some(&officer)).await;
    assert!(a.text.contains(r#"data-version="2""#) && a.text.contains("を保存し、適用しました"));
    assert!(a.text.contains(r#"<tr data-version="1">"#), "history");
    // The same text again is not a new version.
    let a = send(
        form(&csrf, "2", &l2_satellite_denied(default), reason),
        Some(ORIGIN),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(h.store.current_policy().await.unwrap().unwrap().version, 2);
    // An old version can be loaded back into the editor.
    let a = h.get("/officer/rules?version=1", Some(&officer)).await;
    assert!(a.text.contains("編集欄に読み込みました"));
}

#[tokio::test]
async fn desks_devices_and_bcp_change_like_the_cli() {
    let h = H::new().await;
    h.user("officer1", "情報政策課", &[Role::Officer]).await;
    h.user("yamada", "総務課", &[Role::Staff]).await;
    let now = kakehashi_store::unix_now();
    h.store
        .add_desk(
            &kakehashi_store::Desk {
                id: "DESK-1".into(),
                department: "総務課".into(),
                level: 2,
                segment: Segment::Lgwan,
                service: kakehashi_store::DeskService::Rdp,
                owners: ["yamada".to_string()].into(),
            },
            Audit::new(now, "cli:test", "desk.add").subject("DESK-1"),
        )
        .await
        .unwrap();
    h.store
        .upsert_device(
            &DeviceSpec {
                id: "PC-1".into(),
                class: DeviceClass::Home,
                loaned_to: Some("yamada".into()),
                cert_serial: Some("01".into()),
            },
            Audit::new(now, "cli:test", "device.add").subject("PC-1"),
        )
        .await
        .unwrap();
    h.store
        .create_login_token(
            &NewLoginToken {
                token_hash: Hash256::digest(b"t"),
                user_id: "yamada".into(),
                device_id: "PC-1".into(),
                cert_serial: "01".into(),
                expires_at: now + 3600,
            },
            Audit::new(now, "yamada", "token.issue").subject("PC-1"),
        )
        .await
        .unwrap();
    let officer = h.sign_in("officer1").await;
    let csrf = h.get("/officer/desks", Some(&officer)).await.csrf();

    // Desk level 2 → 3.
    let a = h
        .post(
            "/officer/desks",
            &officer,
            &[
                ("csrf", &csrf),
                ("id", "DESK-1"),
                ("level", "4"),
                ("segment", "lgwan"),
                ("reason", "x"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = h
        .post(
            "/officer/desks",
            &officer,
            &[
                ("csrf", &csrf),
                ("id", "DESK-1"),
                ("level", "3"),
                ("segment", "lgwan"),
                ("reason", "人事データを扱うため"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    assert_eq!(h.store.get_desk("DESK-1").await.unwrap().unwrap().level, 3);
    let a = h.get(a.location(), Some(&officer)).await;
    assert!(
        a.text.contains(r#"<td class="level-3">3</td>"#),
        "{}",
        a.text
    );
    // Registered as a non-RDP service (its sessions are not enforced); the
    // level stays, and an unknown service is refused.
    for (service, status) in [
        ("vnc", StatusCode::BAD_REQUEST),
        ("other", StatusCode::SEE_OTHER),
    ] {
        let a = h
            .post(
                "/officer/desks",
                &officer,
                &[
                    ("csrf", &csrf),
                    ("id", "DESK-1"),
                    ("level", "3"),
                    ("segment", "lgwan"),
                    ("service", service),
                    ("reason", "エコーサービス"),
                ],
            )
            .await;
        assert_eq!(a.status, status, "{service}: {}", a.text);
    }
    let d = h.store.get_desk("DESK-1").await.unwrap().unwrap();
    assert_eq!(
        (d.level, d.service),
        (3, kakehashi_store::DeskService::Other)
    );
    let a = h.get("/officer/desks", Some(&officer)).await;
    assert!(a.text.contains(r#"data-service="other""#), "{}", a.text);

    // Block, then unblock, the laptop.
    let a = h
        .post(
            "/officer/devices/block",
            &officer,
            &[
                ("csrf", &csrf),
                ("id", "PC-1"),
                ("status", "lost"),
                ("reason", "紛失の届出"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    let d = h.store.get_device("PC-1").await.unwrap().unwrap();
    assert_eq!(d.status, DeviceStatus::Lost);
    let t = h
        .store
        .get_login_token(&Hash256::digest(b"t"))
        .await
        .unwrap()
        .unwrap();
    assert!(t.revoked_at.is_some(), "the device's logins are revoked");
    let a = h
        .post(
            "/officer/devices/unblock",
            &officer,
            &[("csrf", &csrf), ("id", "PC-1"), ("reason", "発見された")],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    let d = h.store.get_device("PC-1").await.unwrap().unwrap();
    assert_eq!(d.status, DeviceStatus::Active);

    // BCP: declared, on every page's banner, ended.
    let a = h.get("/", None).await;
    assert!(!a.text.contains("bcp-banner"));
    let until = h.state.local_now().date().next_day().unwrap();
    let a = h
        .post(
            "/officer/bcp/declare",
            &officer,
            &[
                ("csrf", &csrf),
                ("scope", "all"),
                ("reason", "大雪のため"),
                ("until_date", &super::officer::ymd(until)),
                ("until_time", "18:00"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    let active = h
        .store
        .active_bcp(kakehashi_store::unix_now())
        .await
        .unwrap();
    assert_eq!(active.len(), 1);
    for path in ["/", "/enroll", "/me?lang=en", "/officer/bcp"] {
        let a = h.get(path, Some(&officer)).await;
        assert!(
            a.text.contains(r#"id="bcp-banner""#) && a.text.contains("大雪のため"),
            "{path}: {}",
            a.text
        );
    }
    assert!(h
        .get("/?lang=en", None)
        .await
        .text
        .contains("BCP mode in force"));
    assert!(h.get("/", None).await.text.contains("BCPモード実施中"));
    let a = h
        .post(
            "/officer/bcp/end",
            &officer,
            &[
                ("csrf", &csrf),
                ("id", &active[0].id),
                ("reason", "除雪完了"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    assert!(!h.get("/", None).await.text.contains("bcp-banner"));
    // A declaration in the past is refused.
    let a = h
        .post(
            "/officer/bcp/declare",
            &officer,
            &[
                ("csrf", &csrf),
                ("scope", "all"),
                ("reason", "r"),
                ("until_date", "2020-01-01"),
                ("until_time", "18:00"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    let log = h.audit().await;
    for (action, subject, reason) in [
        ("desk.set", "DESK-1", "人事データを扱うため"),
        ("device.block", "PC-1", "紛失の届出"),
        ("token.revoke_all", "PC-1", "device_blocked"),
        ("device.unblock", "PC-1", "発見された"),
        ("bcp.declare", "all", "大雪のため"),
        ("bcp.end", active[0].id.as_str(), "除雪完了"),
    ] {
        assert!(
            log.iter().any(|r| r.action == action
                && r.subject == subject
                && r.reason == reason
                && r.actor == "user:officer1"),
            "{action} missing"
        );
    }
    assert!(h.store.verify_audit().await.unwrap().is_intact());
}

#[tokio::test]
async fn plans_are_submitted_by_staff_and_decided_by_their_chief() {
    let h = H::new().await;
    h.user("yamada", "総務課", &[Role::Staff]).await;
    h.user("chief-somu", "総務課", &[Role::Chief, Role::Staff])
        .await;
    h.user("chief-zeimu", "税務課", &[Role::Chief]).await;
    h.user("nobody", "総務課", &[]).await;
    let staff = h.sign_in("yamada").await;
    let a = h.get("/plans", Some(&staff)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(!a.text.contains("waiting-plans"), "not a chief");
    let csrf = a.csrf();
    assert_eq!(
        h.get("/plans", Some(&h.sign_in("nobody").await))
            .await
            .status,
        StatusCode::FORBIDDEN
    );

    let date = super::officer::ymd(h.state.local_now().date().next_day().unwrap());
    let submit = |start: &'static str, end: &'static str, date: String| {
        let (h, staff, csrf) = (&h, staff.clone(), csrf.clone());
        async move {
            h.post(
                "/plans",
                &staff,
                &[
                    ("csrf", &csrf),
                    ("date", &date),
                    ("start", start),
                    ("end", end),
                    ("place", "自宅"),
                ],
            )
            .await
        }
    };
    assert_eq!(
        submit("17:15", "08:30", date.clone()).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        submit("08:30", "17:15", "2020-01-01".into()).await.status,
        StatusCode::BAD_REQUEST
    );
    let a = submit("08:30", "17:15", date.clone()).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    let plans = h.store.plans_for_user("yamada").await.unwrap();
    assert_eq!(plans.len(), 1);
    let id = plans[0].id.clone();
    assert_eq!(
        (plans[0].start_min, plans[0].end_min, plans[0].status),
        (510, 1035, PlanStatus::Submitted)
    );
    let a = h.get("/plans", Some(&staff)).await;
    assert!(a.text.contains(&format!(r#"<tr data-plan="{id}">"#)) && a.text.contains("承認待ち"));

    // Staff cannot decide; another department's chief cannot; the chief's own plan is not theirs to approve.
    let decide = |cookie: String, id: String, decision: &'static str, reason: &'static str| {
        let h = &h;
        async move {
            let csrf = h.get("/plans", Some(&cookie)).await.csrf();
            h.post(
                "/plans/decide",
                &cookie,
                &[
                    ("csrf", &csrf),
                    ("id", &id),
                    ("decision", decision),
                    ("reason", reason),
                ],
            )
            .await
        }
    };
    let a = decide(staff.clone(), id.clone(), "approve", "").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(a.text.contains("所属長（chief）"));
    let zeimu = h.sign_in("chief-zeimu").await;
    let a = decide(zeimu.clone(), id.clone(), "approve", "").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    let chief = h.sign_in("chief-somu").await;
    let own = h
        .store
        .submit_plan(
            &PlanSpec {
                user_id: "chief-somu".into(),
                date: date.clone(),
                start_min: 510,
                end_min: 1035,
                place: "自宅".into(),
            },
            Audit::new(0, "user:chief-somu", "plan.submit").subject("chief-somu"),
        )
        .await
        .unwrap();
    let a = decide(chief.clone(), own.id.clone(), "approve", "").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    // The chief sees the plan waiting, and approves it; a rejection needs a reason.
    let a = h.get("/plans", Some(&chief)).await;
    assert!(a.text.contains(r#"id="waiting-plans""#), "{}", a.text);
    // The waiting list holds the staff member's plan, not the chief's own
    // (which the chief cannot decide).
    let waiting = a
        .text
        .split(r#"id="waiting-plans""#)
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .unwrap();
    assert!(
        waiting.contains(&format!(r#"data-plan="{id}""#)),
        "{waiting}"
    );
    assert!(
        !waiting.contains(&format!(r#"data-plan="{}""#, own.id)),
        "{waiting}"
    );
    let a = decide(chief.clone(), id.clone(), "reject", "").await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = decide(chief.clone(), id.clone(), "approve", "").await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    let p = h.store.get_plan(&id).await.unwrap().unwrap();
    assert_eq!(p.status, PlanStatus::Approved);
    assert_eq!(p.decided_by.as_deref(), Some("user:chief-somu"));
    let a = decide(chief.clone(), id.clone(), "approve", "").await;
    assert_eq!(a.status, StatusCode::CONFLICT, "decided once");

    let log = h.audit().await;
    assert!(log
        .iter()
        .any(|r| r.action == "plan.submit" && r.actor == "user:yamada" && r.subject == "yamada"));
    assert!(log
        .iter()
        .any(|r| r.action == "plan.approve" && r.actor == "user:chief-somu" && r.subject == id));
}

/// Unix time of local `date` `h:m` at the portal's offset.
fn local_at(h: &H, date: &str, hour: i64, min: i64) -> i64 {
    let d = kakehashi_store::localtime::parse_date(date).unwrap();
    kakehashi_store::localtime::local_midnight(d, h.state.offset()) + hour * 3600 + min * 60
}

/// A closed session of `user` from `start` to `end`, as the relay records it.
async fn seed_session(h: &H, id: &str, user: &str, class: DeviceClass, start: i64, end: i64) {
    let s = kakehashi_store::SessionStart {
        id: id.into(),
        user_id: user.into(),
        device_id: "PC-1".into(),
        desk_id: "DESK-1".into(),
        class,
        level: 2,
        transport: "quic".into(),
        gateway: "gw1".into(),
    };
    h.store
        .start_session(
            &s,
            Audit::new(start, "gateway", "session.start").subject(id),
        )
        .await
        .unwrap();
    let end_rec = kakehashi_store::SessionEnd {
        reason: "client_closed".into(),
        bytes_up: 1,
        bytes_down: 2,
    };
    h.store
        .end_session(
            id,
            &end_rec,
            Audit::new(end, "gateway", "session.end").subject(id),
        )
        .await
        .unwrap();
}

/// 総務課: sato twice on the 6th (7:45 in all), across the month's end on
/// the 31st, and once in December; the chief on the 7th. 税務課: ito on the 6th.
async fn attendance_fixture(h: &H) {
    h.user("sato", "総務課", &[Role::Staff]).await;
    h.user("chief-somu", "総務課", &[Role::Chief, Role::Staff])
        .await;
    h.user("ito", "税務課", &[Role::Staff]).await;
    h.user("chief-zeimu", "税務課", &[Role::Chief]).await;
    h.user("ops", "情報政策課", &[Role::Operator, Role::Officer])
        .await;
    let at = |d: &str, hh: i64, mm: i64| local_at(h, d, hh, mm);
    let seeds = [
        (
            "s1",
            "sato",
            DeviceClass::Home,
            at("2025-01-06", 8, 30),
            at("2025-01-06", 12, 0),
        ),
        (
            "s2",
            "sato",
            DeviceClass::Satellite,
            at("2025-01-06", 13, 0),
            at("2025-01-06", 17, 15),
        ),
        (
            "s3",
            "sato",
            DeviceClass::Mobile,
            at("2025-01-31", 22, 0),
            at("2025-02-01", 1, 0),
        ),
        (
            "s4",
            "sato",
            DeviceClass::Home,
            at("2024-12-27", 9, 0),
            at("2024-12-27", 10, 0),
        ),
        (
            "c1",
            "chief-somu",
            DeviceClass::Home,
            at("2025-01-07", 9, 0),
            at("2025-01-07", 10, 0),
        ),
        (
            "i1",
            "ito",
            DeviceClass::Home,
            at("2025-01-06", 9, 0),
            at("2025-01-06", 17, 0),
        ),
    ];
    for (id, user, class, start, end) in seeds {
        seed_session(h, id, user, class, start, end).await;
    }
}

fn header_of(a: &Answer, name: header::HeaderName) -> &str {
    a.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn attendance_report_is_the_chiefs_department_as_the_cli_writes_it() {
    let h = H::new().await;
    attendance_fixture(&h).await;
    let chief = h.sign_in("chief-somu").await;

    // The form is on the chief's plans page, not on staff's.
    let a = h.get("/plans", Some(&chief)).await;
    assert!(
        a.text.contains(r#"id="attendance-form""#) && a.text.contains("勤務実績レポート"),
        "{}",
        a.text
    );
    let a = h.get("/plans", Some(&h.sign_in("sato").await)).await;
    assert!(!a.text.contains("attendance-form"));

    let a = h
        .get(
            "/plans/attendance.csv?month=2025-01&lang=ja&bom=1",
            Some(&chief),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(
        header_of(&a, header::CONTENT_TYPE),
        "text/csv; charset=utf-8"
    );
    assert_eq!(
        header_of(&a, header::CONTENT_DISPOSITION),
        "attachment; filename=\"attendance-dept-2025-01.csv\"; \
         filename*=UTF-8''attendance-%E7%B7%8F%E5%8B%99%E8%AA%B2-2025-01.csv"
    );
    assert_eq!(header_of(&a, header::CACHE_CONTROL), "no-store");
    // Hand-computed: 08:30–12:00 and 13:00–17:15 (7:45); the 31st to midnight; December left out.
    let lines: Vec<&str> = a.text.lines().collect();
    assert_eq!(
        lines,
        [
            "\u{feff}日付,職員ID,氏名,所属,最初の開始,最後の終了,接続時間,接続秒数,セッション数,端末区分,接続中",
            "2025-01-07,chief-somu,chief-somu さん,総務課,09:00:00,10:00:00,1:00:00,3600,1,home,",
            "2025-01-06,sato,sato さん,総務課,08:30:00,17:15:00,7:45:00,27900,2,home/satellite,",
            "2025-01-31,sato,sato さん,総務課,22:00:00,24:00:00,2:00:00,7200,1,mobile,",
        ]
    );

    // Byte for byte what `kakehashi-gateway report attendance --dept 総務課
    // --bom` writes: that command renders the same store rows with the same
    // writer (gateway/src/cli/report.rs; the CLI itself is tested end to end).
    use kakehashi_store::attendance as report;
    let offset = kakehashi_store::localtime::utc_offset(9 * 3600);
    let people = report::people(&h.store, Some("総務課")).await.unwrap();
    let days = kakehashi_store::localtime::parse_month("2025-01").unwrap();
    let rows = report::read_rows(
        &h.store,
        &people,
        days,
        offset,
        h.state.now(),
        Some("総務課"),
    )
    .await
    .unwrap();
    let mut cli = Vec::new();
    report::write_csv(&rows, offset, report::Lang::Ja, true, &mut cli).unwrap();
    assert_eq!(a.text, String::from_utf8(cli).unwrap());

    // English header, no BOM, an ASCII department name needs no filename*.
    let a = h
        .get("/plans/attendance.csv?month=2025-01&lang=en", Some(&chief))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text.starts_with("date,user_id,name,dept,"), "{}", a.text);
    assert_eq!(
        super::plans::attendance_disposition("somu", "2025-01"),
        "attachment; filename=\"attendance-somu-2025-01.csv\""
    );
    assert_eq!(
        super::plans::attendance_disposition("a\"b/c\r\n", "2025-01"),
        "attachment; filename=\"attendance-a_b_c-2025-01.csv\"; \
         filename*=UTF-8''attendance-a%22b%2Fc%0D%0A-2025-01.csv"
    );

    // Another department's chief gets theirs, and nothing of 総務課.
    let a = h
        .get(
            "/plans/attendance.csv?month=2025-01",
            Some(&h.sign_in("chief-zeimu").await),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.text.lines().count(), 2, "{}", a.text);
    assert!(a
        .text
        .contains("2025-01-06,ito,ito さん,税務課,09:00:00,17:00:00,8:00:00"));
    assert!(!a.text.contains("総務課") && !a.text.contains("sato"));

    // Each download is audited: who, which department, which month.
    let log: Vec<AuditRecord> = h
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "report.attendance")
        .collect();
    assert_eq!(log.len(), 3, "{log:#?}");
    assert_eq!(
        (log[0].actor.as_str(), log[0].subject.as_str()),
        ("user:chief-somu", "総務課")
    );
    let detail: Value = serde_json::from_str(&log[0].detail).unwrap();
    assert_eq!(detail["month"], "2025-01");
    assert_eq!(detail["rows"], 3);
    assert_eq!(
        (log[2].actor.as_str(), log[2].subject.as_str()),
        ("user:chief-zeimu", "税務課")
    );
    assert!(h.store.verify_audit().await.unwrap().is_intact());
}

#[tokio::test]
async fn attendance_report_is_refused_to_others_and_for_other_departments() {
    let h = H::new().await;
    attendance_fixture(&h).await;
    let chief = h.sign_in("chief-somu").await;

    // Staff, and an officer/operator without the chief role: 403 in both languages.
    for user in ["sato", "ops"] {
        let a = h
            .get(
                "/plans/attendance.csv?month=2025-01",
                Some(&h.sign_in(user).await),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{user}");
        assert!(
            a.text.contains("勤務実績レポートは所属長（chief）"),
            "{}",
            a.text
        );
        assert!(a
            .text
            .contains("Only section chiefs can download the attendance report"));
        assert!(!header_of(&a, header::CONTENT_TYPE).starts_with("text/csv"));
        assert!(!a.text.contains("ito さん") && !a.text.contains("sato さん,"));
    }
    // Not signed in: the sign-in form, which comes back to the download.
    let a = h.get("/plans/attendance.csv?month=2025-01", None).await;
    assert!(!header_of(&a, header::CONTENT_TYPE).starts_with("text/csv"));
    assert!(
        a.text
            .contains("data-next=\"/plans/attendance.csv?month=2025-01\""),
        "{}",
        a.text
    );

    // A chief asking for another department: refused, nothing of it shown.
    for q in ["dept=%E7%A8%8E%E5%8B%99%E8%AA%B2", "dept=", "dept=somu"] {
        let a = h
            .get(
                &format!("/plans/attendance.csv?month=2025-01&{q}"),
                Some(&chief),
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{q}");
        assert!(a.text.contains("自分の所属の分だけ"), "{}", a.text);
        assert!(!a.text.contains("ito"));
    }
    // Naming one's own department is the same as not naming it.
    let a = h
        .get(
            "/plans/attendance.csv?month=2025-01&dept=%E7%B7%8F%E5%8B%99%E8%AA%B2",
            Some(&chief),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);

    // A bad month: 400 with a sentence saying what is wanted.
    for q in [
        "month=2025-13",
        "month=2025-1",
        "month=",
        "month=2025-01-01",
        "",
        "month=%E4%BB%8A%E6%9C%88",
    ] {
        let a = h
            .get(&format!("/plans/attendance.csv?{q}"), Some(&chief))
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{q}");
        assert!(
            a.text.contains("YYYY-MM の形式（例: 2025-01）"),
            "{}",
            a.text
        );
    }
    let a = h
        .get("/plans/attendance.csv?month=2025-13&lang=en", Some(&chief))
        .await;
    assert!(a
        .text
        .contains("The month is not valid: give it as YYYY-MM"));

    // Only the one download that happened is in the audit log.
    let log: Vec<AuditRecord> = h
        .audit()
        .await
        .into_iter()
        .filter(|r| r.action == "report.attendance")
        .collect();
    assert_eq!(log.len(), 1, "{log:#?}");
    assert_eq!(log[0].actor, "user:chief-somu");
}

#[tokio::test]
async fn officers_see_lockouts_and_unlock_on_the_devices_page() {
    let h = H::new().await;
    h.user("off-1", "joho", &[Role::Officer]).await;
    h.user("staff-1", "somu", &[Role::Staff]).await;
    h.user("u-locked", "somu", &[Role::Staff]).await;
    let now = h.state.now();
    let rule = kakehashi_store::LockoutRule {
        max_failures: 1,
        window_secs: 60,
        lockout_secs: 900,
    };
    h.store
        .record_failures(
            &[("pair:u-locked@192.0.2.9", rule), ("user:u-locked", rule)],
            Audit::new(now, "portal", "login.failed").subject("u-locked"),
        )
        .await
        .unwrap();
    let officer = h.sign_in("off-1").await;
    let page = h.get("/officer/devices", Some(&officer)).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.text.contains(r#"data-lock-user="u-locked""#),
        "{}",
        page.text
    );
    assert!(page.text.contains("192.0.2.9"));
    let csrf = page.csrf();

    // Staff cannot unlock, and a forged form (no or a wrong token, or from
    // another origin) changes nothing.
    let staff = h.sign_in("staff-1").await;
    let a = h
        .post(
            "/officer/users/unlock",
            &staff,
            &[("csrf", &csrf), ("id", "u-locked"), ("reason", "x")],
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    for forged in ["", "AAAA"] {
        let a = h
            .post(
                "/officer/users/unlock",
                &officer,
                &[("csrf", forged), ("id", "u-locked"), ("reason", "x")],
            )
            .await;
        assert_eq!(a.status, StatusCode::FORBIDDEN, "{forged:?}: {}", a.text);
    }
    let a = h
        .post_from(
            "/officer/users/unlock",
            &officer,
            Some("https://evil.example"),
            &[("csrf", &csrf), ("id", "u-locked"), ("reason", "x")],
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text);
    assert_eq!(h.store.active_lockouts(now).await.unwrap().len(), 2);

    // A reason is required; with one the locks go, audited.
    let a = h
        .post(
            "/officer/users/unlock",
            &officer,
            &[("csrf", &csrf), ("id", "u-locked"), ("reason", "")],
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let a = h
        .post(
            "/officer/users/unlock",
            &officer,
            &[
                ("csrf", &csrf),
                ("id", "u-locked"),
                ("reason", "本人に確認済み"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.text);
    assert!(h.store.active_lockouts(now).await.unwrap().is_empty());
    let rec = h
        .audit()
        .await
        .into_iter()
        .find(|r| r.action == "user.unlock")
        .expect("the unlock is audited");
    assert_eq!(
        (rec.actor.as_str(), rec.subject.as_str()),
        ("user:off-1", "u-locked")
    );
    assert_eq!(rec.reason, "本人に確認済み");
    let page = h.get(a.location(), Some(&officer)).await;
    assert!(page.text.contains("id=\"no-locks\""), "{}", page.text);
}

/// A form action: its path, a visitor allowed to post it, one who is not
/// (none: any signed-in visitor may), and the form's other fields.
type Action<'a> = (&'a str, &'a str, Option<&'a str>, &'a [(&'a str, &'a str)]);

#[tokio::test]
async fn every_staff_action_checks_role_csrf_and_origin() {
    // Every state-changing POST of the portal, for a visitor of the wrong
    // role, with a forged CSRF token, from another origin, without an
    // origin, and signed out: refused, and nothing is changed or audited.
    let h = H::new().await;
    h.user("officer1", "情報政策課", &[Role::Officer]).await;
    h.user("operator1", "情報政策課", &[Role::Operator]).await;
    h.user("chief1", "総務課", &[Role::Chief]).await;
    h.user("staff1", "総務課", &[Role::Staff]).await;
    let officer = h.sign_in("officer1").await;
    let operator = h.sign_in("operator1").await;
    let chief = h.sign_in("chief1").await;
    let staff = h.sign_in("staff1").await;
    let mut tokens = std::collections::HashMap::new();
    for c in [&officer, &operator, &chief, &staff] {
        tokens.insert(c.clone(), h.csrf_of(c).await);
    }
    let token = |cookie: &str| tokens[cookie].clone();
    let actions: &[Action] = &[
        (
            "/officer/rules",
            &officer,
            Some(&staff),
            &[("text", "x"), ("reason", "r"), ("base", "1")],
        ),
        (
            "/officer/desks",
            &officer,
            Some(&operator),
            &[("id", "PC-1"), ("level", "2"), ("reason", "r")],
        ),
        (
            "/officer/devices/block",
            &officer,
            Some(&chief),
            &[("id", "PC-1"), ("reason", "r")],
        ),
        (
            "/officer/devices/unblock",
            &officer,
            Some(&staff),
            &[("id", "PC-1"), ("reason", "r")],
        ),
        (
            "/officer/users/unlock",
            &officer,
            Some(&operator),
            &[("user", "staff1"), ("reason", "r")],
        ),
        (
            "/officer/bcp/declare",
            &officer,
            Some(&chief),
            &[("reason", "大雪"), ("hours", "8")],
        ),
        (
            "/officer/bcp/end",
            &officer,
            Some(&staff),
            &[("id", "1"), ("reason", "r")],
        ),
        (
            "/ops/sessions/end",
            &operator,
            Some(&officer),
            &[("id", "s-1"), ("reason", "r")],
        ),
        (
            "/plans/decide",
            &chief,
            Some(&staff),
            &[("id", "1"), ("decision", "approve"), ("reason", "r")],
        ),
        (
            "/plans",
            &staff,
            Some(&officer),
            &[
                ("date", "2026-12-08"),
                ("start", "09:00"),
                ("end", "17:00"),
                ("place", "自宅"),
            ],
        ),
        ("/me/revoke", &staff, None, &[("token", "abc")]),
        ("/me/logout", &staff, None, &[]),
    ];
    let before = h.audit().await.len();
    for &(path, allowed, denied, fields) in actions {
        let with = |csrf: String| {
            let mut f: Vec<(&str, String)> = vec![("csrf", csrf)];
            f.extend(fields.iter().map(|(k, v)| (*k, (*v).to_owned())));
            f
        };
        if let Some(denied) = denied {
            let a = post_form(&h, path, denied, Some(ORIGIN), &with(token(denied))).await;
            assert_eq!(
                a.status,
                StatusCode::FORBIDDEN,
                "{path} wrong role: {}",
                a.text
            );
            assert!(a.text.contains("role_required"), "{path}: {}", a.text);
        }
        for (what, origin, csrf) in [
            (
                "forged token",
                Some(ORIGIN),
                "eW91LWhhdmUtYmVlbi1waHdu".to_owned(),
            ),
            ("no token", Some(ORIGIN), String::new()),
            (
                "another origin",
                Some("https://evil.example"),
                token(allowed),
            ),
            ("no origin", None, token(allowed)),
        ] {
            let a = post_form(&h, path, allowed, origin, &with(csrf)).await;
            assert_eq!(a.status, StatusCode::FORBIDDEN, "{path} {what}: {}", a.text);
            assert!(
                a.text.contains("csrf_invalid") || a.text.contains("origin_mismatch"),
                "{path} {what}: {}",
                a.text
            );
        }
        let a = post_form(&h, path, "", Some(ORIGIN), &with("x".into())).await;
        assert_ne!(a.status, StatusCode::OK, "{path} signed out: {}", a.text);
        assert!(!a.status.is_server_error(), "{path} signed out: {}", a.text);
    }
    let after = h.audit().await;
    assert_eq!(
        after.len(),
        before,
        "refused actions wrote: {:?}",
        &after[before..]
    );
}

async fn post_form(
    h: &H,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
    form: &[(&str, String)],
) -> Answer {
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    h.post_from(path, cookie, origin, &form).await
}
