//! Terminals: PTY allocation, window size and resize, Ctrl-C, and the
//! interactive `distroctl shell` driven through a real PTY.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{can_run_agent, text, Cli, TestAgent};
use futures_util::{SinkExt, StreamExt};
use protocol::{ExecRequest, Frame, FrameCodec, Hello, Request, Response, TtyRequest};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

type Conn = Framed<UnixStream, FrameCodec>;

async fn exec(agent: &TestAgent, argv: &[&str], tty: Option<(u16, u16)>) -> Conn {
    let stream = UnixStream::connect(&agent.socket).await.unwrap();
    let mut conn = Framed::new(stream, FrameCodec);
    conn.send(Frame::Hello(Hello::new("test"))).await.unwrap();
    assert!(matches!(conn.next().await, Some(Ok(Frame::Hello(_)))));
    let req = ExecRequest {
        distro: "term".into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        tty: tty.map(|(rows, cols)| TtyRequest {
            rows,
            cols,
            term: Some("xterm-256color".into()),
        }),
        ..Default::default()
    };
    conn.send(Frame::Request(Request::Exec(req))).await.unwrap();
    match conn.next().await {
        Some(Ok(Frame::Response(Response::ExecStarted { .. }))) => conn,
        other => panic!("exec did not start: {other:?}"),
    }
}

/// Reads frames until `Exit`; returns stdout and the status.
async fn finish(conn: &mut Conn) -> (String, i32) {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), conn.next()).await {
            Ok(Some(Ok(Frame::Stdout(b)))) => out.extend_from_slice(&b),
            Ok(Some(Ok(Frame::Stderr(_)))) => {}
            Ok(Some(Ok(Frame::Exit(code)))) => return (text(&out), code),
            other => panic!("unexpected {other:?} after {:?}", text(&out)),
        }
    }
}

/// Reads stdout until it contains `needle`.
async fn wait_for(conn: &mut Conn, needle: &str) -> String {
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), conn.next()).await {
            Ok(Some(Ok(Frame::Stdout(b)))) => {
                out.extend_from_slice(&b);
                if text(&out).contains(needle) {
                    return text(&out);
                }
            }
            other => panic!("waiting for {needle:?}: {other:?} after {:?}", text(&out)),
        }
    }
}

fn agent_with_term() -> Option<TestAgent> {
    if !can_run_agent() {
        return None;
    }
    let agent = TestAgent::start();
    agent.import_debian("term");
    Some(agent)
}

#[tokio::test(flavor = "multi_thread")]
async fn tty_is_a_terminal_only_when_asked() {
    let Some(agent) = agent_with_term() else {
        return;
    };

    let mut with = exec(
        &agent,
        &["sh", "-c", "test -t 0 && echo yes || echo no"],
        Some((24, 80)),
    )
    .await;
    let mut without = exec(
        &agent,
        &["sh", "-c", "test -t 0 && echo yes || echo no"],
        None,
    )
    .await;

    assert_eq!(finish(&mut with).await.0.trim(), "yes");
    assert_eq!(finish(&mut without).await.0.trim(), "no");
}

#[tokio::test(flavor = "multi_thread")]
async fn tty_reports_size_and_follows_resize() {
    let Some(agent) = agent_with_term() else {
        return;
    };
    let script = "stty size; echo ready; read line; stty size; echo $TERM";

    let mut conn = exec(&agent, &["sh", "-c", script], Some((33, 111))).await;
    let first = wait_for(&mut conn, "ready").await;
    conn.send(Frame::Resize {
        rows: 50,
        cols: 132,
    })
    .await
    .unwrap();
    conn.send(Frame::Stdin(Bytes::from_static(b"go\r")))
        .await
        .unwrap();
    let (rest, code) = finish(&mut conn).await;

    assert!(first.contains("33 111"), "{first}");
    assert!(rest.contains("50 132"), "{rest}");
    assert!(rest.contains("xterm-256color"), "{rest}");
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_byte_interrupts_the_foreground_process() {
    let Some(agent) = agent_with_term() else {
        return;
    };

    // The process that prints "started" is the one Ctrl-C must stop, with
    // nothing (such as a shell's exec) happening between the two.
    let mut conn = exec(
        &agent,
        &["perl", "-e", "$| = 1; print qq{started\n}; sleep 100"],
        Some((24, 80)),
    )
    .await;
    wait_for(&mut conn, "started").await;
    let sent = Instant::now();
    conn.send(Frame::Stdin(Bytes::from_static(b"\x03")))
        .await
        .unwrap();
    let (_, code) = finish(&mut conn).await;

    assert_eq!(code, 128 + 2, "SIGINT ends sleep");
    assert!(sent.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn signal_frame_reaches_a_process_on_pipes() {
    let Some(agent) = agent_with_term() else {
        return;
    };

    let mut conn = exec(&agent, &["sh", "-c", "echo started; exec sleep 100"], None).await;
    wait_for(&mut conn, "started").await;
    conn.send(Frame::Signal(libc::SIGTERM as u32))
        .await
        .unwrap();
    let (_, code) = finish(&mut conn).await;

    assert_eq!(code, 128 + libc::SIGTERM);
}

#[test]
fn shell_runs_interactively_on_a_real_terminal() {
    let Some(agent) = agent_with_term() else {
        return;
    };
    let mut cmd = agent.cli();
    cmd.args(["shell", "term"]);

    common::assert_interactive_shell(cmd);
}
