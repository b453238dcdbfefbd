//! Starting a distro's sshd again after the VM restarted, so that an ssh
//! `ProxyCommand` (`distroctl proxy NAME PORT` on the distro's ssh port)
//! keeps working without a new `ssh-setup`. The command's output is
//! collected, never written to stdout: there the ssh protocol flows.

use futures_util::{SinkExt, StreamExt};
use protocol::{ExecRequest, Frame, Request, Response};

use crate::agent_client::{self, AgentAddr, ClientError};

/// The pid file `ssh-setup` starts sshd with.
pub const SSHD_PID_FILE: &str = "/run/distroctl-sshd.pid";

/// Starts `/usr/sbin/sshd` on `port` in `distro` when it is installed and
/// not running; returns true when sshd was started.
pub async fn start_if_installed(
    agent: &AgentAddr,
    distro: &str,
    port: u16,
) -> Result<bool, ClientError> {
    let script = format!(
        "[ -x /usr/sbin/sshd ] || exit 3
         if [ -f {SSHD_PID_FILE} ] && kill -0 \"$(cat {SSHD_PID_FILE})\" 2>/dev/null; then exit 4; fi
         mkdir -p /run/sshd && exec /usr/sbin/sshd -p {port} -o PidFile={SSHD_PID_FILE}"
    );
    let request = ExecRequest {
        distro: distro.to_owned(),
        argv: vec!["sh".into(), "-c".into(), script],
        user: Some("root".into()),
        ..Default::default()
    };
    let mut conn = agent_client::connect(agent).await?;
    conn.send(Frame::Request(Request::Exec(request))).await?;
    match agent_client::response(&mut conn).await? {
        Response::ExecStarted { .. } => {}
        other => return Err(ClientError::Unexpected(format!("{other:?}"))),
    }
    conn.send(Frame::StdinEof).await?;
    let mut output = Vec::new();
    loop {
        match conn.next().await {
            Some(Ok(Frame::Stdout(b) | Frame::Stderr(b))) => output.extend_from_slice(&b),
            Some(Ok(Frame::Exit(code))) => {
                if code != 0 && code != 3 && code != 4 {
                    tracing::warn!(
                        distro,
                        code,
                        output = %String::from_utf8_lossy(&output),
                        "starting sshd failed"
                    );
                }
                return Ok(code == 0);
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ClientError::Disconnected),
        }
    }
}
