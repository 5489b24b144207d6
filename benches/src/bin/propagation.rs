//! `propagation` (P9, issue 18): how long a revocation made through one
//! gateway takes to end the affected sessions on the others.
//!
//! Three real `kakehashi-gateway` processes (A, B, C) on one throwaway
//! PostgreSQL (fsync on), real `kakehashi-agent` processes serving echo
//! desks (each dials A and learns B and C from the member list), and in
//! each round, for each kind of revocation, one user on one laptop with
//! `--sessions` live sessions over TLS/TCP spread over B and C (the laptop
//! redeemed a one-time code over its own mutual TLS for its login token).
//! Then an officer's command runs against A's configuration:
//!
//! - `device`: `kakehashi-gateway admin device block --id LAPTOP`
//! - `user`: `kakehashi-gateway admin user disable --id USER`
//!
//! and the clock runs from the command's commit (the commit time PostgreSQL
//! recorded for the transaction that wrote its audit record,
//! `track_commit_timestamp`; server and bench share the machine's clock) to
//! the moment each affected session's stream ends as the laptop reads it.
//! Sessions of the kinds not yet revoked must stay up (they are the
//! control), and the laptop asks the gateway that carried each ended
//! session why it ended (`SessionEndQuery`, as `kakehashi connect` does):
//! the answer must be the revocation's reason code. Also printed: the time
//! from the command's start (process start, its connection to PostgreSQL
//! and the transaction included).
//!
//! Prints one line per kind and round, then p50 / p99 / max per kind as a
//! Markdown table, and a JSON summary on stdout; fails when a session did
//! not end within 10 s, a control session ended, or a reason was wrong.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Parser;
use kakehashi_pki::TerminalClass;
use kakehashi_proto::io::{read_frame, write_message};
use kakehashi_proto::message::{
    Message, Secret, SessionAccepted, SessionEndQuery, SessionEndReport, SessionRequest,
};
use kakehashi_proto::{FrameKind, Refusal, ALPN_TERMINAL};
use kakehashi_tests::{CertFiles, GatewayOpts, GatewayProc, Pki, Proc};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser, Debug)]
#[command(
    name = "propagation",
    about = "P9: revocation through one gateway to session end on the others"
)]
struct Args {
    /// Rounds (each with fresh users and laptops).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Live sessions per kind of revocation in a round (spread over B and C).
    #[arg(long, default_value_t = 75)]
    sessions: usize,
    /// Desks (one agent process each).
    #[arg(long, default_value_t = 4)]
    desks: usize,
    /// `[policy] watch` of the gateways: how often their change feed polls
    /// besides LISTEN/NOTIFY (the shipped default when not given).
    #[arg(long)]
    watch: Option<String>,
}

/// The kinds of revocation, in the order each round makes them.
const KINDS: [&str; 2] = ["device", "user"];

/// Live sessions: when each stream ended (if it did) as the laptop saw it,
/// in seconds since the UNIX epoch (the clock PostgreSQL's commit times use).
type Ends = Arc<Mutex<HashMap<usize, f64>>>;

fn unix_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn open_policy(pki: &Pki) -> anyhow::Result<std::path::PathBuf> {
    let p = pki.path().join("open-policy.toml");
    std::fs::write(&p, kakehashi_tests::OPEN_POLICY)?;
    Ok(p)
}

async fn gateway(pki: &Pki, name: &str, url: &str, a: &Args) -> anyhow::Result<GatewayProc> {
    let watch = a
        .watch
        .as_ref()
        .map(|w| format!("watch = \"{w}\"\n"))
        .unwrap_or_default();
    let identity = format!(
        "[store]\nurl = \"{url}\"\n[identity]\nrequire_login = true\n[policy]\n{watch}file = \"{}\"\n",
        open_policy(pki)?.display()
    );
    Ok(kakehashi_tests::start_gateway(
        pki,
        GatewayOpts {
            name: Some(name.into()),
            identity: Some(identity),
            shipped_keepalive: true,
            ..Default::default()
        },
    )
    .await)
}

/// Wait until `gw`'s log says `desk`'s agent is online.
async fn wait_agent(gw: &GatewayProc, desk: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if gw
            .proc
            .log_text()
            .lines()
            .any(|l| l.contains("Agent online") && l.contains(desk))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the agent of {desk} did not come online on every gateway")
}

/// Open a session to `desk` through `addr` as laptop `dev` with `token`,
/// check one echo round trip, and hold it until the gateway ends it.
/// Returns the session id.
async fn open_session(
    pki: &Pki,
    dev: &CertFiles,
    addr: SocketAddr,
    desk: &str,
    token: &str,
    id: usize,
    ends: Ends,
) -> anyhow::Result<String> {
    let mut s = kakehashi_tests::raw_tls(pki, dev, addr, ALPN_TERMINAL).await?;
    let m = SessionRequest {
        desk: desk.into(),
        token: Some(Secret(token.into())),
    };
    write_message(&mut s, &m).await?;
    let f = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut s))
        .await
        .context("no answer to the session request")??;
    let session_id = match f.kind {
        FrameKind::SessionAccepted => SessionAccepted::from_frame(&f)?.session_id,
        FrameKind::Refused => bail!("session refused: {:?}", Refusal::from_frame(&f)?),
        k => bail!("unexpected answer {k:?}"),
    };
    let msg = format!("session {id}");
    s.write_all(msg.as_bytes()).await?;
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .context("no echo")??;
    if buf != msg.as_bytes() {
        bail!("the echo differs");
    }
    tokio::spawn(async move {
        let mut b = [0u8; 256];
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        ends.lock().expect("ends").insert(id, unix_secs());
    });
    Ok(session_id)
}

/// Why the gateway at `addr` ended `session_id`, as `kakehashi connect`
/// asks after a session's stream ends: the reason code, or `none`.
async fn end_reason(
    pki: &Pki,
    dev: &CertFiles,
    addr: SocketAddr,
    session_id: &str,
) -> anyhow::Result<String> {
    let mut s = kakehashi_tests::raw_tls(pki, dev, addr, ALPN_TERMINAL).await?;
    let q = SessionEndQuery {
        session_id: session_id.into(),
    };
    write_message(&mut s, &q).await?;
    let f = tokio::time::timeout(Duration::from_secs(10), read_frame(&mut s))
        .await
        .context("no answer to the end query")??;
    Ok(SessionEndReport::from_frame(&f)?
        .reason
        .map_or_else(|| "none".into(), |r| r.code))
}

/// The officer's command for `kind` against `gw`'s configuration.
async fn revoke(gw: &GatewayProc, kind: &str, user: &str, laptop: &str) -> anyhow::Result<()> {
    let config = gw.config.to_str().context("config path")?;
    let args: Vec<&str> = match kind {
        "device" => vec![
            "admin", "--config", config, "device", "block", "--id", laptop, "--reason", "lost",
        ],
        _ => vec![
            "admin", "--config", config, "user", "disable", "--id", user, "--reason", "left",
        ],
    };
    let (ok, out) = kakehashi_tests::gateway_cli(&args).await;
    if !ok {
        bail!("{args:?} failed: {out}");
    }
    Ok(())
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let pg = kakehashi_benches::pgserver::start_with(0, None, true).await?;
    let url = pg.url();
    let mut pki = Pki::new();
    let gw_a = gateway(&pki, "gw-a", &url, &a).await?;
    let gw_b = gateway(&pki, "gw-b", &url, &a).await?;
    let gw_c = gateway(&pki, "gw-c", &url, &a).await?;
    let store = kakehashi_store::Store::open(&url).await?;

    // Every user of the run owns every desk (the open policy lets any
    // laptop class reach any level; ownership is still checked).
    let users: Vec<String> = (0..a.rounds)
        .flat_map(|r| KINDS.iter().map(move |k| format!("u-{k}-{r}")))
        .collect();
    for u in &users {
        kakehashi_tests::add_user(&store, u).await;
    }
    let owners: Vec<&str> = users.iter().map(String::as_str).collect();
    let echo = kakehashi_tests::echo_server().await;
    let mut agents: Vec<Proc> = Vec::new();
    let desks: Vec<String> = (0..a.desks.max(1)).map(|d| format!("DESK-{d}")).collect();
    for d in &desks {
        kakehashi_tests::add_desk(&store, d, 1, &owners).await;
        let files = pki.agent(d);
        agents.push(kakehashi_tests::start_agent_with(
            &pki,
            &files,
            &gw_a.addrs,
            echo,
            "tcp",
        ));
    }
    for d in &desks {
        for gw in [&gw_a, &gw_b, &gw_c] {
            wait_agent(gw, d).await?;
        }
    }

    let pool = sqlx::PgPool::connect(&url).await?;
    let ends: Ends = Arc::default();
    let mut next_id = 0usize;
    // Per kind: (from commit, from command start) in seconds.
    let mut lat: HashMap<&str, (Vec<f64>, Vec<f64>)> = HashMap::new();
    let mut early = 0usize;
    // "kind: reason code" of every affected session's end, as reported.
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    let mut missed = 0usize;
    eprintln!(
        "3 gateways on PostgreSQL (fsync on), {} desks; per round {} live sessions per kind over gw-b and gw-c",
        desks.len(),
        a.sessions
    );
    for r in 0..a.rounds {
        // One laptop and one user per kind, logged in, with their sessions.
        let mut groups = Vec::new();
        for kind in KINDS {
            let user = format!("u-{kind}-{r}");
            let laptop = format!("LT-{kind}-{r}");
            let dev = pki.personal_device(&laptop, TerminalClass::Home, &user);
            let token =
                kakehashi_tests::redeem_login(&pki, &dev, gw_b.addrs.terminal_tcp, &store, &user)
                    .await;
            let mut ids = Vec::new();
            let mut carried = Vec::new();
            for i in 0..a.sessions {
                let via = if i % 2 == 0 { &gw_b } else { &gw_c };
                let desk = &desks[i % desks.len()];
                let id = next_id;
                next_id += 1;
                let session_id = open_session(
                    &pki,
                    &dev,
                    via.addrs.terminal_tcp,
                    desk,
                    &token,
                    id,
                    ends.clone(),
                )
                .await
                .with_context(|| format!("session {i} of {laptop} through gw-{}", i % 2))?;
                ids.push(id);
                carried.push((session_id, via.addrs.terminal_tcp));
            }
            groups.push((kind, user, laptop, ids, dev, carried));
        }
        // Past the change feeds' first read after the sessions started.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (g, (kind, user, laptop, ids, dev, carried)) in groups.iter().enumerate() {
            let started = unix_secs();
            revoke(&gw_a, kind, user, laptop).await?;
            let action = if *kind == "device" {
                "device.block"
            } else {
                "user.disable"
            };
            let subject = if *kind == "device" { laptop } else { user };
            let (committed,): (f64,) = sqlx::query_as(
                "SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin))::float8 \
                 FROM audit WHERE action = $1 AND subject = $2",
            )
            .bind(action)
            .bind(subject)
            .fetch_one(&pool)
            .await
            .with_context(|| format!("no {action} record for {subject}"))?;
            // Every affected session ends within 10 s, or is counted missed.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let all_ended = {
                    let e = ends.lock().expect("ends");
                    ids.iter().all(|i| e.contains_key(i))
                };
                if all_ended {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let e = ends.lock().expect("ends").clone();
            let (from_commit, from_start) = lat.entry(kind).or_default();
            let mut here = Vec::new();
            for i in ids {
                match e.get(i) {
                    Some(t) => {
                        let d = t - committed;
                        if d < 0.0 {
                            bail!(
                                "a session ended {:.1} ms before the revocation committed",
                                -d * 1e3
                            );
                        }
                        here.push(d);
                        from_commit.push(d);
                        from_start.push(t - started);
                    }
                    None => missed += 1,
                }
            }
            // The kinds not revoked yet are the control: still up.
            for (_, _, _, other, _, _) in &groups[g + 1..] {
                early += other.iter().filter(|i| e.contains_key(i)).count();
            }
            // Why each ended, as the laptop asks the gateway that carried it.
            for (session_id, via) in carried {
                let code = end_reason(&pki, dev, *via, session_id).await?;
                *reasons.entry(format!("{kind}: {code}")).or_default() += 1;
            }
            here.sort_by(f64::total_cmp);
            eprintln!(
                "round {} {kind}: {} of {} sessions ended, committed {:.1} ms after the command started; p50 {:.1} ms, max {:.1} ms from the commit",
                r + 1,
                here.len(),
                ids.len(),
                (committed - started) * 1e3,
                pct(&here, 0.5) * 1e3,
                here.last().copied().unwrap_or(f64::NAN) * 1e3
            );
        }
    }
    println!("| revocation through gw-a | sessions (over gw-b, gw-c) | p50 from commit | p99 | max | p99 from the command's start |");
    println!("|---|---|---|---|---|---|");
    let mut summary = Vec::new();
    for kind in KINDS {
        let (mut c, mut s) = lat.remove(kind).unwrap_or_default();
        c.sort_by(f64::total_cmp);
        s.sort_by(f64::total_cmp);
        let what = if kind == "device" {
            "`admin device block`"
        } else {
            "`admin user disable`"
        };
        println!(
            "| {what} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
            c.len(),
            pct(&c, 0.5) * 1e3,
            pct(&c, 0.99) * 1e3,
            c.last().copied().unwrap_or(f64::NAN) * 1e3,
            pct(&s, 0.99) * 1e3
        );
        summary.push(json!({
            "kind": kind,
            "sessions": c.len(),
            "p50_ms": pct(&c, 0.5) * 1e3,
            "p99_ms": pct(&c, 0.99) * 1e3,
            "max_ms": c.last().copied().unwrap_or(f64::NAN) * 1e3,
            "p99_from_command_start_ms": pct(&s, 0.99) * 1e3,
        }));
    }
    println!(
        "{}",
        json!({ "rounds": a.rounds, "sessions_per_kind": a.sessions, "desks": desks.len(),
                "not_ended_within_10s": missed, "control_sessions_ended_early": early,
                "end_reasons": reasons,
                "kinds": summary })
    );
    drop(agents);
    store.close().await;
    drop((gw_a, gw_b, gw_c));
    eprintln!("reasons the gateways gave for the ends: {reasons:?}");
    // Every end must carry the revocation's reason: a session that merely
    // dropped (reason `none`) was not ended by the change feed.
    let wrong: usize = reasons
        .iter()
        .filter(|(k, _)| {
            !(k.ends_with("device: device_blocked")
                || k.ends_with("device: token_revoked")
                || k.ends_with("user: user_disabled")
                || k.ends_with("user: token_revoked"))
        })
        .map(|(_, n)| n)
        .sum();
    if missed > 0 || early > 0 || wrong > 0 {
        bail!("{missed} session(s) not ended within 10 s; {early} control session(s) ended early; {wrong} ended for another reason");
    }
    Ok(())
}
