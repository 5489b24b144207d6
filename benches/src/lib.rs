//! Benchmarks of the real Kakehashi binaries. Each binary in `src/bin/`
//! prints its measurement; `benches/RESULTS.md` records them with the
//! command that reproduces each row.
