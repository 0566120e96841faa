//! Traffic through the router: UDP senders and TCP connections from the client, and
//! listeners in every upstream that count what arrives where.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use super::{Router, TEST_ADDRESSES};
use crate::netns::Netns;

/// Which upstream a packet reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Upstream {
    Direct,
    Tunnel,
    /// The second direct upstream ([`super::Options::second_direct`]).
    Direct2,
}

/// A listening thread, stopped on drop.
pub(super) struct Listener {
    stop: Arc<AtomicBool>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Datagrams and connections counted per upstream, destination address and port.
pub type Arrivals = Arc<Mutex<HashMap<(Upstream, IpAddr, u16), u64>>>;

impl Router {
    /// Counts UDP datagrams to every test address on `port`, in every upstream.
    ///
    /// # Panics
    ///
    /// When a socket cannot be bound.
    pub fn listen_udp(&mut self, port: u16, arrivals: &Arrivals) {
        self.listen(port, arrivals, |addr| {
            let socket = UdpSocket::bind(addr)?;
            socket.set_read_timeout(Some(Duration::from_millis(20)))?;
            let mut buffer = [0u8; 2048];
            Ok(move || socket.recv_from(&mut buffer).is_ok())
        });
    }

    /// Accepts TCP connections to every test address on `port`, in every upstream.
    ///
    /// # Panics
    ///
    /// When a socket cannot be bound.
    pub fn listen_tcp(&mut self, port: u16, arrivals: &Arrivals) {
        self.listen(port, arrivals, |addr| {
            let listener = TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(move || {
                let accepted = listener.accept().is_ok();
                if !accepted {
                    thread::sleep(Duration::from_millis(5));
                }
                accepted
            })
        });
    }

    /// Every upstream namespace of this router: direct, tunnel and, when wired, direct2.
    #[must_use]
    pub fn upstreams(&self) -> Vec<(Upstream, &Netns)> {
        let mut all = vec![
            (Upstream::Direct, &self.direct),
            (Upstream::Tunnel, &self.tunnel),
        ];
        all.extend(
            self.direct2
                .as_ref()
                .map(|netns| (Upstream::Direct2, netns)),
        );
        all
    }

    /// Binds `bind(address)` in every upstream for every test address, and counts each time
    /// the returned poll (which waits briefly) says something arrived, until dropped.
    fn listen<P>(
        &mut self,
        port: u16,
        arrivals: &Arrivals,
        bind: impl Fn(SocketAddr) -> io::Result<P> + Copy + Send,
    ) where
        P: FnMut() -> bool + Send + 'static,
    {
        let mut listeners = Vec::new();
        for (path, netns) in self.upstreams() {
            for addr in TEST_ADDRESSES {
                let addr: IpAddr = addr.parse().expect("literal");
                let mut poll = netns
                    .run(move || bind(SocketAddr::new(addr, port)))
                    .expect("bind");
                let stop = Arc::new(AtomicBool::new(false));
                let (stop_flag, arrivals) = (Arc::clone(&stop), Arc::clone(arrivals));
                thread::spawn(move || {
                    while !stop_flag.load(Ordering::Relaxed) {
                        if poll() {
                            *arrivals
                                .lock()
                                .expect("arrivals")
                                .entry((path, addr, port))
                                .or_default() += 1;
                        }
                    }
                });
                listeners.push(Listener { stop });
            }
        }
        self.listeners.extend(listeners);
    }

    /// Sends `count` UDP datagrams from the client to `dst:port`, one every `gap`.
    ///
    /// # Panics
    ///
    /// When the client cannot send.
    pub fn send_udp(&self, dst: &str, port: u16, count: u32, gap: Duration) {
        let dst: IpAddr = dst.parse().expect("literal");
        self.client.run(move || send_udp(dst, port, count, gap));
    }

    /// As [`Router::send_udp`], on a thread of its own: a stream that goes on while the test
    /// kills, restarts or feeds the agent.
    ///
    /// # Panics
    ///
    /// On a typo in the address.
    #[must_use]
    pub fn stream_udp(
        &self,
        dst: &str,
        port: u16,
        count: u32,
        gap: Duration,
    ) -> thread::JoinHandle<()> {
        let dst: IpAddr = dst.parse().expect("literal");
        self.client.spawn(move || send_udp(dst, port, count, gap))
    }

    /// Opens a TCP connection from the client to `dst:port`; true when it was accepted.
    ///
    /// # Panics
    ///
    /// On a typo in the address.
    #[must_use]
    pub fn connect_tcp(&self, dst: &str, port: u16) -> bool {
        let dst: IpAddr = dst.parse().expect("literal");
        self.client.run(move || {
            TcpStream::connect_timeout(&SocketAddr::new(dst, port), Duration::from_secs(2)).is_ok()
        })
    }
}

/// Sends from the calling thread's namespace.
fn send_udp(dst: IpAddr, port: u16, count: u32, gap: Duration) {
    let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("literal");
    let socket = UdpSocket::bind(bind).expect("bind");
    for _ in 0..count {
        socket
            .send_to(b"breakout test", SocketAddr::new(dst, port))
            .expect("send");
        if !gap.is_zero() {
            thread::sleep(gap);
        }
    }
}

/// Arrivals of `(path, address, port)`.
///
/// # Panics
///
/// On a typo in the address.
#[must_use]
pub fn arrived(arrivals: &Arrivals, path: Upstream, addr: &str, port: u16) -> u64 {
    let addr: IpAddr = addr.parse().expect("literal");
    arrivals
        .lock()
        .expect("arrivals")
        .get(&(path, addr, port))
        .copied()
        .unwrap_or(0)
}

impl Router {
    /// TCP echo servers on `port` for every test address in every upstream: each accepted
    /// connection is counted in `arrivals` and echoed on a thread of its own until it closes.
    ///
    /// # Panics
    ///
    /// When a socket cannot be bound.
    pub fn serve_tcp_echo(&mut self, port: u16, arrivals: &Arrivals) {
        self.listen(port, arrivals, |addr| {
            let listener = TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(move || {
                if let Ok((mut stream, _)) = listener.accept() {
                    thread::spawn(move || {
                        let _ = stream.set_nonblocking(false);
                        let _ = io::copy(&mut stream.try_clone().expect("clone"), &mut stream);
                    });
                    true
                } else {
                    thread::sleep(Duration::from_millis(5));
                    false
                }
            })
        });
    }

    /// UDP echo servers on `port` for every test address in every upstream: each datagram is
    /// counted in `arrivals` and sent back to where it came from.
    ///
    /// # Panics
    ///
    /// When a socket cannot be bound.
    pub fn serve_udp_echo(&mut self, port: u16, arrivals: &Arrivals) {
        self.listen(port, arrivals, |addr| {
            let socket = UdpSocket::bind(addr)?;
            socket.set_read_timeout(Some(Duration::from_millis(20)))?;
            let mut buffer = [0u8; 2048];
            Ok(move || match socket.recv_from(&mut buffer) {
                Ok((len, from)) => {
                    let _ = socket.send_to(&buffer[..len], from);
                    true
                }
                Err(_) => false,
            })
        });
    }

    /// `count` TCP connections from the client to `dst:port` (an echo server), each sending
    /// 64 bytes every 50 ms and reading them back, until stopped.
    ///
    /// # Panics
    ///
    /// On a typo in the address.
    #[must_use]
    pub fn open_streams(&self, dst: &str, port: u16, count: usize) -> Streams {
        let dst = SocketAddr::new(dst.parse().expect("literal"), port);
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(StreamsState {
            rounds: vec![0; count],
            errors: Vec::new(),
        }));
        let threads = (0..count)
            .map(|n| {
                let (stop, state) = (Arc::clone(&stop), Arc::clone(&state));
                self.client.spawn(move || stream(n, dst, &stop, &state))
            })
            .collect();
        Streams {
            stop,
            state,
            threads,
        }
    }

    /// A call: one UDP 5-tuple from the client to `dst:port` (an echo server), 50 datagrams
    /// a second each way, until stopped.
    ///
    /// # Panics
    ///
    /// On a typo in the address.
    #[must_use]
    pub fn start_call(&self, dst: &str, port: u16) -> Call {
        let dst = SocketAddr::new(dst.parse().expect("literal"), port);
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new((0u64, 0u64)));
        let (stop_flag, shared) = (Arc::clone(&stop), Arc::clone(&counts));
        let thread = self.client.spawn(move || call(dst, &stop_flag, &shared));
        Call {
            stop,
            counts,
            thread: Some(thread),
        }
    }
}

/// What the streams did.
#[derive(Debug, Default)]
pub struct StreamsState {
    /// Echo rounds completed, per connection.
    pub rounds: Vec<u64>,
    /// Every failure: `connection N: what`.
    pub errors: Vec<String>,
}

/// Long-lived TCP connections, stopped on drop.
pub struct Streams {
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<StreamsState>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Streams {
    /// Rounds completed so far, per connection.
    ///
    /// # Panics
    ///
    /// When a stream thread panicked.
    #[must_use]
    pub fn rounds(&self) -> Vec<u64> {
        self.state.lock().expect("streams").rounds.clone()
    }

    /// Failures so far.
    ///
    /// # Panics
    ///
    /// When a stream thread panicked.
    #[must_use]
    pub fn errors(&self) -> Vec<String> {
        self.state.lock().expect("streams").errors.clone()
    }

    /// Waits until every connection completed `more` rounds beyond now; false after `limit`.
    #[must_use]
    pub fn progress(&self, more: u64, limit: Duration) -> bool {
        let start = self.rounds();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            let now = self.rounds();
            if now.len() == start.len() && now.iter().zip(&start).all(|(n, s)| *n >= s + more) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn stream(n: usize, dst: SocketAddr, stop: &AtomicBool, state: &Mutex<StreamsState>) {
    use std::io::{Read as _, Write as _};
    let fail = |what: String| {
        state
            .lock()
            .expect("streams")
            .errors
            .push(format!("connection {n}: {what}"));
    };
    let mut connection = match TcpStream::connect_timeout(&dst, Duration::from_secs(2)) {
        Ok(connection) => connection,
        Err(error) => return fail(format!("connect: {error}")),
    };
    let _ = connection.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buffer = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        if let Err(error) = connection.write_all(&[u8::try_from(n % 256).unwrap_or(0); 64]) {
            return fail(format!("write: {error}"));
        }
        if let Err(error) = connection.read_exact(&mut buffer) {
            return fail(format!("read: {error}"));
        }
        state.lock().expect("streams").rounds[n] += 1;
        thread::sleep(Duration::from_millis(50));
    }
}

/// A UDP call, stopped on drop.
pub struct Call {
    stop: Arc<AtomicBool>,
    /// Datagrams sent and echoes received.
    counts: Arc<Mutex<(u64, u64)>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Call {
    /// Stops sending, waits for the last echoes; returns (sent, received).
    ///
    /// # Panics
    ///
    /// When the call thread panicked.
    #[must_use]
    pub fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("call thread");
        }
        *self.counts.lock().expect("call")
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn call(dst: SocketAddr, stop: &AtomicBool, counts: &Mutex<(u64, u64)>) {
    let bind: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("literal");
    let socket = UdpSocket::bind(bind).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(5)))
        .expect("timeout");
    let mut buffer = [0u8; 256];
    let mut next = std::time::Instant::now();
    let mut draining_until = None;
    loop {
        let now = std::time::Instant::now();
        if stop.load(Ordering::Relaxed) && draining_until.is_none() {
            // The last echoes are still on their way.
            draining_until = Some(now + Duration::from_millis(300));
        }
        if draining_until.is_some_and(|until| now >= until) {
            return;
        }
        if draining_until.is_none() && now >= next {
            if socket.send_to(b"media", dst).is_ok() {
                counts.lock().expect("call").0 += 1;
            }
            next += Duration::from_millis(20);
        }
        if socket.recv_from(&mut buffer).is_ok() {
            counts.lock().expect("call").1 += 1;
        }
    }
}
