//! Write the seed corpus into `fuzz/seeds/<target>/`:
//! `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds`.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let all = kakehashi_fuzz::seeds()
        .into_iter()
        .chain(kakehashi_fuzz::outside::seeds())
        .chain(kakehashi_fuzz::outside::cert_seeds());
    for (target, name, bytes) in all {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&name), bytes)?;
        println!("{target}/{name}");
    }
    Ok(())
}
