//! A canary listener for the open-proxy tests: one port on 127.0.0.1, 127.0.0.2 and (where the
//! machine has it) `[::1]`, counting every connection it accepts. Whoever connects gets
//! `200 OK` with the body `CANARY`, so a leak shows in a response body as well as in the count.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The body every connection gets.
pub const BODY: &str = "CANARY";

/// How long a connection that was already made may take to be counted: the kernel completes
/// the handshake before the accept thread sees it.
const SETTLE: Duration = Duration::from_millis(200);

#[derive(Default)]
struct State {
    accepted: AtomicUsize,
    /// (peer, local address, first line of the request) of each connection.
    log: Mutex<Vec<(SocketAddr, SocketAddr, String)>>,
}

pub struct Canary {
    pub port: u16,
    /// Every address listened on (same port).
    pub addrs: Vec<SocketAddr>,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
}

impl Canary {
    pub fn start() -> Canary {
        for _ in 0..20 {
            let first = TcpListener::bind("127.0.0.1:0").expect("bind canary on 127.0.0.1");
            let port = first.local_addr().unwrap().port();
            // The same port on another loopback address; taken by someone else: try another.
            let Ok(second) = TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), port)) else {
                continue;
            };
            let mut listeners = vec![first, second];
            // Where `localhost` may also resolve; absent in some sandboxes.
            if let Ok(v6) = TcpListener::bind((Ipv6Addr::LOCALHOST, port)) {
                listeners.push(v6);
            }
            return Canary::run(port, listeners);
        }
        panic!("no port free on both 127.0.0.1 and 127.0.0.2 for the canary");
    }

    fn run(port: u16, listeners: Vec<TcpListener>) -> Canary {
        let state = Arc::new(State::default());
        let stop = Arc::new(AtomicBool::new(false));
        let addrs = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        for l in listeners {
            let (st, sp) = (state.clone(), stop.clone());
            std::thread::Builder::new()
                .name("canary".into())
                .spawn(move || {
                    for s in l.incoming() {
                        if sp.load(Ordering::SeqCst) {
                            return;
                        }
                        let Ok(s) = s else { continue };
                        st.accepted.fetch_add(1, Ordering::SeqCst);
                        let st = st.clone();
                        std::thread::spawn(move || answer(s, &st));
                    }
                })
                .unwrap();
        }
        Canary {
            port,
            addrs,
            state,
            stop,
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Connections accepted so far.
    pub fn hits(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted, after giving one already made time to be counted.
    pub fn settled_hits(&self) -> usize {
        std::thread::sleep(SETTLE);
        self.hits()
    }

    /// What reached the canary, for failure messages.
    pub fn report(&self) -> String {
        let log = self.state.log.lock().unwrap();
        log.iter()
            .map(|(peer, local, line)| format!("{peer} -> {local}: {line:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Panics, naming `what` and what reached it, if any connection was accepted (checked at
    /// once: the hit is attributed to the input just sent when it came in time).
    pub fn assert_untouched(&self, what: &str) {
        let n = self.hits();
        assert_eq!(n, 0, "{what}: the canary was contacted:\n{}", self.report());
    }

    /// [`Canary::assert_untouched`] after the settling time: for the end of a test.
    pub fn assert_settled_untouched(&self, what: &str) {
        let n = self.settled_hits();
        assert_eq!(n, 0, "{what}: the canary was contacted:\n{}", self.report());
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake each accept loop so it sees the flag (not counted: the flag is set first).
        for a in &self.addrs {
            let _ = TcpStream::connect_timeout(a, Duration::from_millis(200));
        }
    }
}

/// Reads the request head (briefly) and answers `200 CANARY`, closing the connection.
fn answer(mut s: TcpStream, st: &State) {
    let peer = s
        .peer_addr()
        .unwrap_or(SocketAddr::from((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)));
    let local = s
        .local_addr()
        .unwrap_or(SocketAddr::from((IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)));
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let line = String::from_utf8_lossy(&buf)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    st.log.lock().unwrap().push((peer, local, line));
    let _ = s.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
             Cache-Control: max-age=3600\r\nConnection: close\r\n\r\n{BODY}",
            BODY.len()
        )
        .as_bytes(),
    );
    let _ = s.shutdown(Shutdown::Both);
}
