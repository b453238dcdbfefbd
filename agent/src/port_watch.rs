//! `watch_ports`: tells the host which TCP ports listen inside the VM, so
//! it can forward the same ports on its own loopback.
//!
//! The kernel announces no new listeners over netlink (sock_diag only
//! multicasts destroyed sockets), so the table is polled. Every
//! [`POLL_INTERVAL`] one sock_diag dump per address family (two netlink
//! round trips returning only listeners) is compared with the last one;
//! that costs microseconds, runs only while a host watches, and keeps a new
//! server reachable from the host well within two seconds.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::{ErrorKind, Frame, Listener, PortChange, Response};

use crate::server::Connection;
use crate::sock_diag::{is_forwardable, SockDiag};

/// How often the listener table is read while a host watches.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The events that turn `old` into `new`: disappearances first, so a host
/// that re-binds a port sees it free before it appears again.
pub fn diff(old: &BTreeSet<Listener>, new: &BTreeSet<Listener>) -> Vec<(PortChange, Listener)> {
    let gone = old.difference(new).map(|l| (PortChange::Disappeared, *l));
    let came = new.difference(old).map(|l| (PortChange::Appeared, *l));
    gone.chain(came).collect()
}

/// Serves one watcher until it disconnects.
pub async fn serve(mut conn: Connection) {
    let diag = match SockDiag::open() {
        Ok(diag) => diag,
        Err(e) => {
            let msg = format!("cannot watch ports: {}", crate::error_chain(&e));
            let _ = conn
                .send(Frame::Response(Response::error(ErrorKind::Internal, msg)))
                .await;
            return;
        }
    };
    let mut known = BTreeSet::new();
    let mut failing = false;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let now: BTreeSet<Listener> = match diag.listeners() {
                    Ok(all) => all.into_iter().filter(is_forwardable).collect(),
                    Err(e) => {
                        // Once per failure streak, not every poll.
                        if !failing {
                            tracing::warn!(error = %crate::error_chain(&e), "reading listeners failed");
                        }
                        failing = true;
                        continue;
                    }
                };
                failing = false;
                for (change, listener) in diff(&known, &now) {
                    tracing::debug!(?change, ?listener, "port event");
                    let event = Response::PortEvent { change, listener };
                    if conn.send(Frame::Response(event)).await.is_err() {
                        return;
                    }
                }
                known = now;
            }
            frame = conn.next() => match frame {
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ports: &[u16]) -> BTreeSet<Listener> {
        ports
            .iter()
            .map(|&port| Listener {
                address: "0.0.0.0".parse().unwrap(),
                port,
            })
            .collect()
    }

    #[test]
    fn diff_reports_disappeared_before_appeared() {
        let events = diff(&set(&[22, 80]), &set(&[80, 8123]));

        assert_eq!(
            events,
            [
                (PortChange::Disappeared, set(&[22]).pop_first().unwrap()),
                (PortChange::Appeared, set(&[8123]).pop_first().unwrap()),
            ]
        );
    }

    #[test]
    fn diff_of_equal_tables_is_empty() {
        assert!(diff(&set(&[1, 2]), &set(&[1, 2])).is_empty());
    }
}
