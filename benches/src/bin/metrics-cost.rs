//! What the Prometheus metrics cost on the session path, and what a scrape
//! costs with many live sessions.
//!
//! Per session the gateway does exactly this (gateway/src/server.rs): look up
//! the `sessions_active{level,class,dept,transport}` child and increment it,
//! observe the set-up time, count the start, update the capacity gauge; at
//! the end add the bytes, count the end reason, decrement, update the
//! capacity gauge. This program times that sequence over realistic label
//! sets (3 levels × 3 classes × 40 departments × 2 transports) against the
//! same loop without the metric calls (the baseline), and times `/metrics`
//! rendering with every label combination live.
//!
//! ```text
//! cargo run --release -p kakehashi-benches --bin metrics-cost -- --sessions 200000
//! ```

use std::hint::black_box;
use std::time::Instant;

use clap::Parser;
use kakehashi_relay::metrics::Metrics;

#[derive(Parser, Debug)]
struct Args {
    /// Session lifecycles timed.
    #[arg(long, default_value_t = 200_000)]
    sessions: usize,
}

const CLASSES: [&str; 3] = ["home", "mobile", "satellite"];
const TRANSPORTS: [&str; 2] = ["quic", "tcp"];

fn main() {
    let args = Args::parse();
    let m = Metrics::new();
    m.sessions_max.set(20_000);
    let depts: Vec<String> = (0..40).map(|i| format!("dept-{i:02}")).collect();
    let levels = ["1", "2", "3"];
    let label = |i: usize| {
        (
            levels[i % 3],
            CLASSES[(i / 3) % 3],
            depts[(i / 9) % 40].as_str(),
            TRANSPORTS[(i / 360) % 2],
        )
    };
    // Baseline: the same loop and label choice, no metric calls.
    let t = Instant::now();
    let mut sink = 0usize;
    for i in 0..args.sessions {
        let (l, c, d, tr) = label(i);
        sink = sink.wrapping_add(black_box(l.len() + c.len() + d.len() + tr.len()));
    }
    let base = t.elapsed();
    black_box(sink);

    let t = Instant::now();
    let mut active = 0i64;
    for i in 0..args.sessions {
        let (l, c, d, tr) = label(i);
        // Start.
        m.session_setup.observe(black_box(0.004));
        m.sessions_started.with_label_values(&[c, tr]).inc();
        let g = m.sessions_active.with_label_values(&[l, c, d, tr]);
        g.inc();
        active += 1;
        m.capacity_used.set(active as f64 / 20_000.0);
        // End.
        m.bytes
            .with_label_values(&["up"])
            .inc_by(black_box(1_000_000));
        m.bytes
            .with_label_values(&["down"])
            .inc_by(black_box(9_000_000));
        m.sessions_ended.with_label_values(&["closed"]).inc();
        g.dec();
        active -= 1;
        m.capacity_used.set(active as f64 / 20_000.0);
    }
    let with = t.elapsed();
    let per = (with.as_nanos() as f64 - base.as_nanos() as f64) / args.sessions as f64;
    println!(
        "metrics per session (start + end): {per:.0} ns (loop without metrics: {:.1} ns; {} lifecycles)",
        base.as_nanos() as f64 / args.sessions as f64,
        args.sessions
    );

    // A scrape with every label combination present (720 series of sessions_active).
    for i in 0..720 {
        let (l, c, d, tr) = label(i);
        m.sessions_active.with_label_values(&[l, c, d, tr]).add(27);
    }
    let n = 50;
    let t = Instant::now();
    let mut bytes = 0;
    for _ in 0..n {
        bytes = black_box(m.render()).len();
    }
    let scrape = t.elapsed() / n;
    println!(
        "one /metrics render with 720 live session series (~19,440 sessions): {:.2} ms, {} KiB",
        scrape.as_secs_f64() * 1e3,
        bytes / 1024
    );
    println!(
        "session set-up through the gateway is milliseconds (kakehashi_session_setup_seconds); {per:.0} ns is {:.4} % of 1 ms",
        per / 1e6 * 100.0
    );
}
