//! Benchmarks of the real Kakehashi binaries: the load generator
//! (`kakehashi-loadgen`), the baselines' back ends and the bare mutual-TLS
//! accept loop (`tls-accept`), and the idle-memory bench. `benches/run.sh`
//! runs every row of the performance table against its baseline,
//! `benches/soak.sh` the long run under churn ([`soak`]); the cluster
//! benches (`audit-seal.sh`, `propagation.sh` for P9, `login-storm.sh` for
//! P10) start their own PostgreSQL ([`pgserver`]);
//! `benches/RESULTS.md` records them with the command for each row.

pub mod backend;
pub mod fleet;
pub mod gateway;
pub mod pgserver;
pub mod pki;
pub mod procstat;
pub mod seed;
pub mod soak;
pub mod stats;
pub mod traffic;
