//! A small HTTP/1.1 server on 127.0.0.1 for the download tests: serves fixed
//! bodies, honours (or ignores) `Range`, can cut a response off mid-body, can
//! answer with an error status, and records every request it gets.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

/// What the server does for one path.
#[derive(Clone, Default)]
pub struct Route {
    /// The body served with 200 (or 206 for a range).
    pub body: Vec<u8>,
    /// Whether `Range: bytes=N-` gets a 206; otherwise the whole body again.
    pub honour_range: bool,
    /// For each of the next responses, cut the connection after this many
    /// body bytes.
    pub cuts: VecDeque<usize>,
    /// Answer with this status and no body instead.
    pub status: Option<u16>,
    /// Answer a range request with a 206 for this offset instead of the
    /// one asked for (a broken server or cache).
    pub wrong_range_start: Option<usize>,
}

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The request path.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

/// The running server; it stops with the test process.
pub struct TestServer {
    addr: SocketAddr,
    routes: Arc<Mutex<HashMap<String, Route>>>,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl TestServer {
    /// Starts a server on an ephemeral port of 127.0.0.1.
    pub fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let addr = listener.local_addr().unwrap();
        let routes: Arc<Mutex<HashMap<String, Route>>> = Arc::default();
        let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
        let (server_routes, server_requests) = (routes.clone(), requests.clone());
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (routes, requests) = (server_routes.clone(), server_requests.clone());
                thread::spawn(move || serve(stream, &routes, &requests));
            }
        });
        TestServer {
            addr,
            routes,
            requests,
        }
    }

    /// Sets what `path` serves.
    pub fn route(&self, path: &str, route: Route) {
        self.routes.lock().unwrap().insert(path.to_owned(), route);
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(
    stream: TcpStream,
    routes: &Mutex<HashMap<String, Route>>,
    requests: &Mutex<Vec<Request>>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_owned();
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_owned());
            }
        }
    }
    requests.lock().unwrap().push(Request {
        path: path.clone(),
        range: range.clone(),
    });
    let (route, cut) = {
        let mut routes = routes.lock().unwrap();
        match routes.get_mut(&path) {
            Some(route) => {
                let cut = route.cuts.pop_front();
                (Some(route.clone()), cut)
            }
            None => (None, None),
        }
    };
    let mut stream = stream;
    let Some(route) = route else {
        respond(&mut stream, "404 Not Found", &[], b"", None);
        return;
    };
    if let Some(status) = route.status {
        respond(&mut stream, &format!("{status} Error"), &[], b"", None);
        return;
    }
    let start = range
        .as_deref()
        .filter(|_| route.honour_range)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok())
        .map(|asked| route.wrong_range_start.unwrap_or(asked));
    let len = route.body.len();
    match start {
        Some(start) if start >= len => {
            let content_range = format!("Content-Range: bytes */{len}");
            respond(
                &mut stream,
                "416 Range Not Satisfiable",
                &[&content_range],
                b"",
                None,
            );
        }
        Some(start) => {
            let content_range = format!("Content-Range: bytes {start}-{}/{len}", len - 1);
            respond(
                &mut stream,
                "206 Partial Content",
                &[&content_range],
                &route.body[start..],
                cut,
            );
        }
        None => respond(&mut stream, "200 OK", &[], &route.body, cut),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[&str],
    body: &[u8],
    cut: Option<usize>,
) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for header in headers {
        head += header;
        head += "\r\n";
    }
    head += "\r\n";
    let sent = cut.unwrap_or(body.len()).min(body.len());
    let _ = stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&body[..sent]))
        .and_then(|()| stream.flush());
    let _ = stream.shutdown(Shutdown::Both);
}
