//! The distroctl guest agent: runs inside the utility VM and serves the host
//! over vsock (or a Unix socket in tests). Each distro is a directory on the
//! data disk started as its own namespace-isolated environment.

pub mod adoption;
pub mod archive;
pub mod cgroup;
pub mod clock;
pub mod console;
pub mod device_filter;
pub mod distro_init;
pub mod distro_root;
pub mod exec;
pub mod host_shares;
pub mod isolated_net;
pub mod lifecycle;
pub mod memory_trim;
pub mod namespaces;
pub mod port_watch;
pub mod relay;
pub mod server;
pub mod settings_check;
pub mod sock_diag;
pub mod stats;
pub mod store;
pub mod transfer;

/// An error and its causes as one line, `outer: inner: root`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
