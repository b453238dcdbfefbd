//! IDE and tool integration over OpenSSH: generated `Host <distro>.distroctl`
//! entries that tunnel through `distroctl proxy`, and the one-command sshd
//! setup inside a distro.

pub mod ssh_config;
pub mod ssh_setup;
pub mod sshd_start;
