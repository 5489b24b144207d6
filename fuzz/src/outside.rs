//! Helpers of the targets for files and bodies from outside the wire
//! protocol (`policy_toml`, `config_files`, `audit_export`, …): the fixture
//! directory config files point into, the requests a fuzzed policy is
//! asked about, a sealed audit chain built from fuzzer choices, and the
//! seeds of these targets.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine as _;
use kakehashi_policy::{
    what_if_request, ExplainArgs, Level, PlanArg, Policy, Request, Segment, TerminalClass,
};
use kakehashi_store::export::ExportRecord;
use kakehashi_store::{AuditRecord, Hash256};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use ring::signature::KeyPair as _;
use time::OffsetDateTime;

/// A directory holding what valid configuration files point to: the fuzz
/// ticket key's public half as `ticket.pub`. Made once per process, in the
/// same place every time (written atomically, so parallel jobs agree).
pub fn fixture_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("kakehashi-fuzz-fixtures-1");
        std::fs::create_dir_all(&dir).expect("fixture directory");
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(
            b"kakehashi-fuzz-ticket-key-seed!!",
        )
        .expect("a 32-byte seed is a valid key");
        let line = format!(
            "ed25519:{}\n",
            base64::engine::general_purpose::STANDARD.encode(pair.public_key().as_ref())
        );
        let tmp = dir.join(format!("ticket.pub.{}", std::process::id()));
        std::fs::write(&tmp, line).expect("fixture file");
        std::fs::rename(&tmp, dir.join("ticket.pub")).expect("fixture file");
        dir
    })
}

/// Two instants: a Thursday morning in Tokyo, and a Saturday night.
fn instants() -> [OffsetDateTime; 2] {
    [
        OffsetDateTime::from_unix_timestamp(1_768_438_800).expect("2026-01-15T10:00:00+09:00"),
        OffsetDateTime::from_unix_timestamp(1_768_647_600).expect("2026-01-17T20:00:00+09:00"),
    ]
}

/// The requests a fuzzed policy is asked about, each with its instant:
/// every level × terminal class from an owner with an approved plan (in
/// and out of a department a rule may name), one from the `mynumber`
/// segment, and a level-2 home request without a plan under BCP.
pub fn policy_requests(policy: &Policy) -> Vec<(Request, OffsetDateTime)> {
    let args = |level, class, segment, plan, bcp, dept: Option<&str>| ExplainArgs {
        policy_text: String::new(),
        level,
        class,
        segment,
        at: String::new(),
        plan,
        bcp,
        dept: dept.map(str::to_owned),
        mfa_age_mins: Some(5),
        json: false,
    };
    let mut asks = Vec::new();
    for (i, level) in [Level::L1, Level::L2, Level::L3].into_iter().enumerate() {
        for class in [
            TerminalClass::Home,
            TerminalClass::Mobile,
            TerminalClass::Satellite,
        ] {
            let dept = (i == 1).then_some("総務課");
            asks.push(args(
                level,
                class,
                Segment::Lgwan,
                PlanArg::Approved,
                false,
                dept,
            ));
        }
    }
    asks.push(args(
        Level::L1,
        TerminalClass::Satellite,
        Segment::Mynumber,
        PlanArg::Approved,
        true,
        None,
    ));
    asks.push(args(
        Level::L2,
        TerminalClass::Home,
        Segment::Internet,
        PlanArg::None,
        true,
        None,
    ));
    let mut out = Vec::new();
    for at in instants() {
        for a in &asks {
            out.push((what_if_request(a, policy, at), at));
        }
    }
    out
}

/// One record of a fuzzed audit chain.
#[derive(Debug, Arbitrary)]
pub struct RecordInput {
    /// Seq after the previous record's (1 for a chain without gaps).
    pub step: i8,
    /// Unix seconds.
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub subject: String,
    /// Why.
    pub reason: String,
    /// Detail text (hashed as it is, JSON or not).
    pub detail: String,
}

/// What is done to a sealed chain before it is verified.
#[derive(Debug, Arbitrary)]
pub enum Damage {
    /// Nothing.
    None,
    /// The actor of a record is changed after sealing.
    Edit(u8),
    /// A record after the first is resealed with another previous hash.
    Relink(u8),
    /// A record between the first and the last is left out.
    Drop(u8),
}

/// A fuzzed audit chain: the first record's seq and previous hash, the
/// records, the offset of the export's `time` column, and the damage.
#[derive(Debug, Arbitrary)]
pub struct ChainInput {
    /// Seq of the first record.
    pub first_seq: i64,
    /// The first record's `prev_hash` (zeros required when `first_seq` is 1).
    pub first_prev: [u8; 32],
    /// The records, first to last.
    pub records: Vec<RecordInput>,
    /// Hours east of UTC for the `time` column (modulo 15).
    pub utc_offset_hours: i8,
    /// What is done to the chain.
    pub damage: Damage,
}

/// The chain as `audit export` writes it (JSON lines), and whether
/// `audit verify` must find it intact: no damage that shows, consecutive
/// seqs without overflow, every time representable, and a zero previous
/// hash when the chain starts at seq 1.
pub fn export_chain(input: &ChainInput) -> (String, bool) {
    let offset = i32::from(input.utc_offset_hours % 15) * 3600;
    let mut intact =
        input.records.is_empty() || !(input.first_seq == 1 && input.first_prev != [0; 32]);
    let mut seq = input.first_seq;
    let mut prev = Hash256(input.first_prev);
    let mut chain = Vec::new();
    for (i, r) in input.records.iter().enumerate() {
        if i > 0 {
            match seq.checked_add(i64::from(r.step)) {
                Some(s) if r.step == 1 => seq = s,
                Some(s) => {
                    intact = false;
                    seq = s;
                }
                None => {
                    intact = false;
                    seq = seq.wrapping_add(i64::from(r.step));
                }
            }
        }
        if kakehashi_store::localtime::rfc3339(r.at, offset).is_empty() {
            intact = false;
        }
        let mut rec = AuditRecord {
            seq,
            at: r.at,
            actor: r.actor.clone(),
            action: r.action.clone(),
            subject: r.subject.clone(),
            reason: r.reason.clone(),
            detail: r.detail.clone(),
            prev_hash: prev,
            hash: Hash256::ZERO,
        };
        rec.hash = rec.compute_hash();
        prev = rec.hash;
        chain.push(rec);
    }
    let n = chain.len();
    match input.damage {
        Damage::None => {}
        Damage::Edit(i) if n > 0 => {
            chain[usize::from(i) % n].actor.push('!');
            intact = false;
        }
        Damage::Relink(i) if n > 1 => {
            let r = &mut chain[1 + usize::from(i) % (n - 1)];
            r.prev_hash.0[0] ^= 1;
            r.hash = r.compute_hash();
            intact = false;
        }
        Damage::Drop(i) if n > 2 => {
            chain.remove(1 + usize::from(i) % (n - 2));
            intact = false;
        }
        _ => {}
    }
    let mut text = String::new();
    for r in &chain {
        text.push_str(&ExportRecord::new(r, offset).to_json());
        text.push('\n');
    }
    (text, intact)
}

/// Seeds of the targets for files and bodies from outside: (target, file
/// name, bytes).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    let mut add = |target, name: &str, bytes: Vec<u8>| out.push((target, name.to_owned(), bytes));
    let with = |b: u8, text: &str| [&[b][..], text.as_bytes()].concat();

    // policy_toml: the shipped default, the example officers start from, a small one.
    add(
        "policy_toml",
        "default.toml",
        kakehashi_policy::default_policy_toml().as_bytes().to_vec(),
    );
    add(
        "policy_toml",
        "departments.toml",
        r#"version = 1
timezone = "+09:00"

[work_hours]
days = ["mon", "tue", "wed", "thu", "fri"]
start = "08:30"
end = "17:15"

[bcp_default_relax]
plan = true
hours = true
levels = [1, 2]
classes = ["home", "mobile"]

[[rules]]
id = "l3-satellite"
levels = [3]
classes = ["satellite"]
effect = "allow"
step_up = true
departments = ["総務課"]
hours = "always"

[rules.controls]
clipboard = "to-remote"
printer = true

[[rules]]
id = "l2-home"
levels = [2]
classes = ["home"]
effect = "allow"
hours = "work-hours"
require_plan = true
desk_access = "department"
mfa_max_age_mins = 600
max_duration_mins = 480
idle_timeout_mins = 30
"#
        .as_bytes()
        .to_vec(),
    );
    add(
        "policy_toml",
        "errors.toml",
        b"version = 2\ntimezone = \"+25:00\"\n[[rules]]\nid = \"bad id!\"\nlevels = []\nclasses = [\"home\"]\neffect = \"allow\"\n".to_vec(),
    );

    // config_files: byte 0 = 0 gateway, 1 agent, 2 client.
    add(
        "config_files",
        "gateway_example.bin",
        with(0, include_str!("../../deploy/gateway.example.toml")),
    );
    add(
        "config_files",
        "gateway_renamed.bin",
        with(
            0,
            "name = \"gw\"\n[tls]\nca = \"ca.crt\"\ncert = \"gw.crt\"\nkey = \"gw.key\"\nticket_key = \"t.key\"\ncrl_grace_hours = 72\n[relay.terminals]\nlisten = \"0.0.0.0:443\"\n[relay.agents]\nlisten = \"0.0.0.0:8443\"\n[store]\nurl = \"postgres://kakehashi:s3cret@db/kakehashi\"\n",
        ),
    );
    add(
        "config_files",
        "agent_example.bin",
        with(1, include_str!("../../deploy/agent.example.toml")),
    );
    add(
        "config_files",
        "agent_fixture.bin",
        with(
            1,
            "[tls]\nca = \"ca.crt\"\ncert = \"agent.crt\"\nkey = \"agent.key\"\n[tickets]\npublic_keys = [\"ticket.pub\"]\n[[gateways]]\naddress = \"[::1]:8443\"\ntransport = \"tcp\"\n[target]\naddress = \"127.0.0.1:3389\"\nconnect_timeout = \"5s\"\n[reconnect]\ninitial_delay = \"500ms\"\nmax_delay = \"30s\"\n[rdp]\nenforce = false\n",
        ),
    );
    add(
        "config_files",
        "client_example.bin",
        with(2, include_str!("../../deploy/client.example.toml")),
    );

    // plan_csv: as a spreadsheet writes it, and with problems.
    add(
        "plan_csv",
        "spreadsheet.csv",
        "\u{feff}user_id,date,start,end,place,status\r\nu1, 2026-01-15 ,8:30,17:15,自宅\r\n\r\nu2,2026-01-16,09:00,12:00,\"支所, 2階\",approved\r\nu3,2026-01-16,13:00,24:00,サテライト,rejected\r\n"
            .as_bytes()
            .to_vec(),
    );
    add(
        "plan_csv",
        "problems.csv",
        b"u1,2026-02-30,09:00,10:00,x\nu1,2026-01-15,10:00,09:00,x\nu1,2026-01-15,9:00,10:00,x,maybe\n\"unclosed,quote\n".to_vec(),
    );

    // portal_json: byte 0 = endpoint.
    add(
        "portal_json",
        "enroll_start.bin",
        with(0, r#"{"user":"tanaka.h","code":"abcd-efgh-jkmn-pqrs"}"#),
    );
    add(
        "portal_json",
        "enroll_finish.bin",
        with(
            1,
            r#"{"ceremony":"c1","credential":{"id":"AAEC","rawId":"AAEC","response":{"attestationObject":"o2NmbXRkbm9uZWdhdHRTdG10oGhhdXRoRGF0YVjESZYN5YgOjGh0NBcPZHZgW4_krrmihjLHmVzzuoMdl2NFAAAAAAAAAAAAAAAAAAAAAAAAAAAAQAAAQ","clientDataJSON":"eyJ0eXBlIjoid2ViYXV0aG4uY3JlYXRlIiwiY2hhbGxlbmdlIjoiQUFBQSIsIm9yaWdpbiI6Imh0dHA6Ly9sb2NhbGhvc3Q6ODQ0NCJ9"},"type":"public-key","extensions":{}}}"#,
        ),
    );
    add(
        "portal_json",
        "login_start.bin",
        with(2, r#"{"user":"tanaka.h"}"#),
    );
    add(
        "portal_json",
        "login_finish.bin",
        with(
            3,
            r#"{"ceremony":"c1","credential":{"id":"AAEC","rawId":"AAEC","response":{"authenticatorData":"SZYN5YgOjGh0NBcPZHZgW4_krrmihjLHmVzzuoMdl2MFAAAAAQ","clientDataJSON":"eyJ0eXBlIjoid2ViYXV0aG4uZ2V0In0","signature":"MEUCIQ","userHandle":null},"type":"public-key","extensions":{}},"redirect_uri":"http://127.0.0.1:49152/callback","state":"st4te-xyz_123","code_challenge":"E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM","code_challenge_method":"S256","device":"PC-0001"}"#,
        ),
    );
    add(
        "portal_json",
        "session_finish.bin",
        with(
            4,
            r#"{"ceremony":"c1","credential":{"id":"AAEC","rawId":"AAEC","response":{"authenticatorData":"AA","clientDataJSON":"e30","signature":"AA","userHandle":"AA"},"type":"public-key"}}"#,
        ),
    );
    add(
        "portal_json",
        "rules_preview.bin",
        with(
            5,
            &serde_json::json!({
                "csrf": "x",
                "text": kakehashi_policy::default_policy_toml(),
                "level": "2", "class": "home", "segment": "lgwan",
                "date": "2026-01-15", "time": "10:00", "plan": "approved",
                "bcp": true, "dept": "総務課", "mfa_age": 30
            })
            .to_string(),
        ),
    );
    add(
        "portal_json",
        "login_query.bin",
        with(
            6,
            "redirect_uri=http%3A%2F%2F%5B%3A%3A1%5D%3A8400%2Fcb&state=st4te-xyz_123&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&device=PC-0001&lang=en",
        ),
    );

    // login_callback: byte 0 even = with a query.
    add(
        "login_callback",
        "code.bin",
        with(0, "code=Zm9vYmFy&state=S1-xyz_0123456789"),
    );
    add(
        "login_callback",
        "error.bin",
        with(0, "state=S1-xyz_0123456789&error=access_denied"),
    );
    add("login_callback", "none.bin", vec![1]);

    // audit_export: 0 = export lines, 1 = structured chain, 2 = checkpoint.
    let records: Vec<AuditRecord> = {
        let mut prev = Hash256::ZERO;
        (1..=3)
            .map(|seq| {
                let mut r = AuditRecord {
                    seq,
                    at: 1_768_438_800 + seq,
                    actor: "admin:yamada".into(),
                    action: "user.add".into(),
                    subject: format!("u{seq}"),
                    reason: "=HYPERLINK(\"x\"), 新規".into(),
                    detail: r#"{"dept":"総務課"}"#.into(),
                    prev_hash: prev,
                    hash: Hash256::ZERO,
                };
                r.hash = r.compute_hash();
                prev = r.hash;
                r
            })
            .collect()
    };
    let export: String = records
        .iter()
        .map(|r| ExportRecord::new(r, 9 * 3600).to_json() + "\n")
        .collect();
    add("audit_export", "export.bin", with(0, &export));
    // Sealed records at seq i64::MAX and after it: `prev + 1` overflowed.
    let top = |seq: i64, prev_hash: Hash256| {
        let mut r = AuditRecord {
            seq,
            prev_hash,
            hash: Hash256::ZERO,
            ..records[0].clone()
        };
        r.hash = r.compute_hash();
        r
    };
    let last = top(i64::MAX, Hash256([7; 32]));
    let after = top(i64::MAX, last.hash);
    add(
        "audit_export",
        "crash-seq-overflow.bin",
        with(
            0,
            &(ExportRecord::new(&last, 0).to_json()
                + "\n"
                + &ExportRecord::new(&after, 0).to_json()
                + "\n"),
        ),
    );
    add(
        "audit_export",
        "structured.bin",
        [&[1u8][..], &[0x41; 160][..]].concat(),
    );
    let key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[7; 32]).expect("key");
    let c = kakehashi_store::Checkpoint::sign(3, records[2].hash, 1_768_438_900, "gw1", &key);
    add(
        "audit_export",
        "checkpoint.bin",
        with(2, &c.to_json().to_string()),
    );
    out
}

/// Seeds of the `certs` target, from a throw-away CA made with our own
/// `kakehashi-pki`: certificates of each kind, a CRL with a revocation,
/// the CRL file, a `ticket.pub` line.
pub fn cert_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    use kakehashi_pki::{CaDir, InitOptions, IssueRequest, RevokeReason, Subject, TerminalClass};
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

    let tmp = tempfile::tempdir().expect("temporary directory");
    let mut ca = CaDir::init(&tmp.path().join("ca"), &InitOptions::default()).expect("CA");
    let mut out = Vec::new();
    let der = |path: &Path| -> Vec<u8> {
        CertificateDer::from_pem_file(path)
            .expect("certificate PEM")
            .to_vec()
    };
    for (name, subject) in [
        (
            "gateway",
            Subject::Gateway {
                name: "gw1.example.lg.jp".into(),
                ips: vec!["127.0.0.1".parse().expect("IP")],
            },
        ),
        (
            "agent",
            Subject::Agent {
                desk: "DESK-0001".into(),
            },
        ),
        (
            "device",
            Subject::Device {
                id: "LAPTOP-0001".into(),
                class: TerminalClass::Home,
                user: Some("tanaka.h".into()),
            },
        ),
    ] {
        let issued = ca.issue(&IssueRequest::new(subject)).expect("issue");
        out.push((
            "certs",
            format!("{name}.bin"),
            [&[0u8][..], &der(&issued.cert_path)].concat(),
        ));
        if name == "device" {
            ca.revoke(&issued.serial, RevokeReason::KeyCompromise)
                .expect("revoke");
        }
    }
    out.push((
        "certs",
        "ca.bin".into(),
        [&[0u8][..], &der(&ca.ca_cert_path())].concat(),
    ));
    let crl_path = ca.write_crl().expect("CRL");
    let pem = std::fs::read(&crl_path).expect("CRL file");
    let crl = CertificateRevocationListDer::from_pem_slice(&pem).expect("CRL PEM");
    out.push((
        "certs",
        "crl_der.bin".into(),
        [&[1u8][..], crl.as_ref()].concat(),
    ));
    out.push((
        "certs",
        "crl_pem.bin".into(),
        [&[2u8][..], &pem[..]].concat(),
    ));
    let public = std::fs::read(ca.ticket_public_path()).expect("ticket.pub");
    out.push((
        "certs",
        "ticket_pub.bin".into(),
        [&[3u8][..], &public[..]].concat(),
    ));
    out
}
