//! The agent's stream relay against a real agent on the host (whose
//! network it shares): `distroctl proxy` with half-close, and bad input.
//! Fast checks of what `vm_network.rs` exercises through the VM. (The
//! forwarder is tested only in the VM: on the host it would see, and
//! forward, its own listeners.)

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;

use common::{can_run_agent, text, Cli, TestAgent};

/// Serves one connection: reads to end of input, answers with the bytes
/// reversed, closes. Returns the port.
fn reverse_once() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut data = Vec::new();
        conn.read_to_end(&mut data).unwrap();
        data.reverse();
        conn.write_all(&data).unwrap();
    });
    port
}

#[test]
fn proxy_relays_binary_data_across_a_half_close() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("px");
    let port = reverse_once();
    let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();

    let out = agent.pipe_through(&["proxy", "px", &port.to_string()], &data);

    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.iter().rev().eq(data.iter()), "reply differs");
}

#[test]
fn proxy_to_a_closed_port_or_unknown_distro_fails_with_one_line() {
    if !can_run_agent() {
        return;
    }
    let agent = TestAgent::start();
    agent.import_debian("closed");
    let free = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port().to_string();
    drop(free);

    let out = agent.run(&["proxy", "closed", &port]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("nothing listens on port {port} in distro closed")),
        "{err}"
    );

    let out = agent.run(&["proxy", "nosuch", &port]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nosuch"),
        "{}",
        text(&out.stderr)
    );
}
