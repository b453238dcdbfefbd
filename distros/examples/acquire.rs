//! Acquires a root filesystem tarball the way `distroctl install` does:
//!
//! ```text
//! cargo run -p distros --example acquire -- CACHE_DIR NAME[:VERSION] [--refresh]
//! cargo run -p distros --example acquire -- CACHE_DIR URL [SHA256]
//! ```

use std::path::PathBuf;

use distros::{acquire, acquire_url, AcquireOptions, Catalog};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(cache), Some(what)) = (args.first(), args.get(1)) else {
        anyhow::bail!("usage: acquire CACHE_DIR NAME[:VERSION]|URL [SHA256|--refresh]");
    };
    let cache = PathBuf::from(cache);
    let options = AcquireOptions {
        refresh: args.iter().any(|a| a == "--refresh"),
        ..AcquireOptions::default()
    };
    let tarball = if what.contains("://") {
        let sha256 = args.get(2).filter(|a| !a.starts_with("--"));
        acquire_url(what, sha256.map(String::as_str), &cache, &options)?
    } else {
        acquire(Catalog::builtin().resolve(what)?, &cache, &options)?
    };
    println!("{tarball:?}");
    Ok(())
}
