//! Traffic through the router: UDP senders and TCP connections from the client, and
//! listeners in both upstreams that count what arrives where.

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

/// Which upstream a packet reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Upstream {
    Direct,
    Tunnel,
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
    /// Counts UDP datagrams to every test address on `port`, in both upstreams.
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

    /// Accepts TCP connections to every test address on `port`, in both upstreams.
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

    /// Binds `bind(address)` in both upstreams for every test address, and counts each time
    /// the returned poll (which waits briefly) says something arrived, until dropped.
    fn listen<P>(
        &mut self,
        port: u16,
        arrivals: &Arrivals,
        bind: impl Fn(SocketAddr) -> io::Result<P> + Copy + Send,
    ) where
        P: FnMut() -> bool + Send + 'static,
    {
        for (path, netns) in [
            (Upstream::Direct, &self.direct),
            (Upstream::Tunnel, &self.tunnel),
        ] {
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
                self.listeners.push(Listener { stop });
            }
        }
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
