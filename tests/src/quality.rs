//! An upstream of a chosen quality, for the uplink prober: a [`Responder`] in one of the
//! router's namespaces answers ICMP echo and HTTP GET on one address after an emulated delay,
//! or not at all; and the marked probes ([`ping`], [`http_get`]) that measure it from the
//! router.
//!
//! This kernel has no netem, so delay and loss are emulated in user space: the responder turns
//! the kernel's own echo replies off in its namespace, reads the requests on a raw socket and
//! sends each reply when its delay is up (replies are scheduled, so one slow answer does not
//! hold back the next). TCP handshakes are the kernel's and cannot be delayed or lost from
//! user space without a TUN device in the path: an HTTP probe connects as fast as the link
//! allows, and only its answer is delayed or withheld.
//!
//! The delays are drawn from the harness's [`Rng`] seeded from the responder's address, so a
//! run draws the same sequence of fates each time (which request gets which fate still
//! depends on the order requests arrive in).

use std::{
    io::{self, Read as _, Write as _},
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use harness_common::Rng;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{dns::checksum, netns::Netns};

/// Probe targets of the quality tests, in documentation space (RFC 5737, RFC 3849) and in no
/// other test's use: not test addresses, so no listener of [`crate::router`] owns them and a
/// [`Responder`] adds them where it runs.
pub const PROBE_V4: &str = "203.0.113.80";
pub const PROBE_V6: &str = "2001:db8:80::1";

/// How often every thread of a responder looks at its stop flag.
const POLL: Duration = Duration::from_millis(20);
/// Echo replies waiting for their delay, at most; requests beyond are dropped (and counted).
const MAX_PENDING: usize = 512;
/// HTTP connections served at once, at most; connections beyond are closed unanswered (and
/// counted as dropped).
const MAX_CONNECTIONS: usize = 256;
/// How long a client has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a dropped request's connection is held open, unless the client gives up first.
const HOLD: Duration = Duration::from_secs(5);
const HTTP_ANSWER: &str = concat!(
    "HTTP/1.1 200 OK\r\n",
    "Content-Type: application/json\r\n",
    "Content-Length: 2\r\n",
    "Connection: close\r\n\r\n{}",
);
const HTTP_REFUSED: &str = concat!(
    "HTTP/1.1 405 Method Not Allowed\r\n",
    "Content-Length: 0\r\n",
    "Connection: close\r\n\r\n",
);

/// The quality a [`Responder`] emulates.
///
/// Each answer waits `delay + uniform(0..spread)`; each request is dropped (never answered)
/// with probability `loss`. The RFC 3550 jitter (the smoothed mean of |D|, D the difference
/// of two successive transit times) of RTTs whose extra delays are independent and uniform on
/// a width `spread` tends to E|X - Y| = spread/3 ([`Emulation::expected_jitter`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Emulation {
    pub delay: Duration,
    pub spread: Duration,
    /// From 0 (answer every request) to 1 (answer none).
    pub loss: f64,
}

impl Emulation {
    /// The jitter an RFC 3550 estimator tends to over these delays: spread/3.
    #[must_use]
    pub fn expected_jitter(&self) -> Duration {
        self.spread / 3
    }

    /// The fate of one request: `Some(delay)` to answer it after `delay`, `None` to drop it.
    fn draw(&self, rng: &mut Rng) -> Option<Duration> {
        if unit(rng) < self.loss {
            return None;
        }
        Some(self.delay + self.spread.mul_f64(unit(rng)))
    }
}

/// Uniform in [0, 1), 2^-32 apart.
fn unit(rng: &mut Rng) -> f64 {
    let high = u32::try_from(rng.next_u64() >> 32).expect("32 bits");
    f64::from(high) / 4_294_967_296.0
}

/// What a responder's threads share.
struct Shared {
    quality: Mutex<(Emulation, Rng)>,
    answered: AtomicU64,
    dropped: AtomicU64,
    stop: AtomicBool,
    /// HTTP connections being served.
    connections: AtomicUsize,
}

impl Shared {
    fn fate(&self) -> Option<Duration> {
        let mut quality = self.quality.lock().expect("responder quality");
        let (emulation, rng) = &mut *quality;
        emulation.draw(rng)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn count(&self, answered: bool) {
        let counter = if answered {
            &self.answered
        } else {
            &self.dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// ICMP echo and HTTP on one address of a namespace, answered as [`Emulation`] says (a
/// perfect uplink until [`Responder::set`]); its threads stop on drop.
pub struct Responder {
    shared: Arc<Shared>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Responder {
    /// Serves echo requests to `addr` and HTTP on `addr:http_port` in `netns`, adding `addr`
    /// to the namespace's loopback when no interface has it. The kernel's echo replies of
    /// `addr`'s family are turned off in the whole namespace and left off: the namespaces are
    /// the test's and go with it.
    pub fn start(netns: &Netns, addr: IpAddr, http_port: u16) -> io::Result<Self> {
        // Binding succeeds exactly when the address is local: the kernel says, no `ip` output
        // is read.
        if netns.run(move || UdpSocket::bind((addr, 0)).is_err()) {
            let (len, nodad) = if addr.is_ipv4() {
                ("32", None)
            } else {
                ("128", Some("nodad"))
            };
            let with_len = format!("{addr}/{len}");
            let mut args = vec!["addr", "add", &with_len, "dev", "lo"];
            args.extend(nodad);
            netns.ip(&args)?;
        }
        netns.sysctl(if addr.is_ipv4() {
            "net.ipv4.icmp_echo_ignore_all=1"
        } else {
            "net.ipv6.icmp.echo_ignore_all=1"
        })?;
        let echo = netns.run(move || echo_socket(addr))?;
        let listener = netns.run(move || TcpListener::bind((addr, http_port)))?;
        listener.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            quality: Mutex::new((Emulation::default(), Rng::new(seed(addr)))),
            answered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        });
        let threads = vec![
            {
                let shared = Arc::clone(&shared);
                thread::spawn(move || answer_echoes(&echo, addr.is_ipv6(), &shared))
            },
            {
                let shared = Arc::clone(&shared);
                thread::spawn(move || accept_http(&listener, &shared))
            },
        ];
        Ok(Self { shared, threads })
    }

    /// The quality from the next request on.
    ///
    /// # Panics
    ///
    /// When a responder thread panicked holding the quality.
    pub fn set(&self, emulation: Emulation) {
        self.shared.quality.lock().expect("responder quality").0 = emulation;
    }

    /// Echo replies sent and HTTP answers written so far.
    #[must_use]
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::Relaxed)
    }

    /// Requests dropped so far (echo requests and HTTP requests).
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // Connection threads look at the flag every POLL.
        let start = Instant::now();
        while self.shared.connections.load(Ordering::Relaxed) > 0
            && start.elapsed() < Duration::from_secs(1)
        {
            thread::sleep(POLL);
        }
    }
}

/// The seed of a responder's draws: its address, IPv6 ones folded to 64 bits.
#[expect(
    clippy::cast_possible_truncation,
    reason = "folding 128 bits into 64 keeps the low half on purpose"
)]
fn seed(addr: IpAddr) -> u64 {
    match addr {
        IpAddr::V4(v4) => u64::from(v4.to_bits()),
        IpAddr::V6(v6) => ((v6.to_bits() >> 64) ^ v6.to_bits()) as u64,
    }
}

/// A raw echo socket bound to `addr` (the kernel then delivers it only packets to `addr`);
/// call inside the namespace.
fn echo_socket(addr: IpAddr) -> io::Result<Socket> {
    let socket = if addr.is_ipv4() {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?
    } else {
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?
    };
    socket.bind(&SocketAddr::new(addr, 0).into())?;
    Ok(socket)
}

/// An echo reply waiting for its delay.
struct Pending {
    at: Instant,
    to: SockAddr,
    reply: Vec<u8>,
}

/// Reads echo requests and sends each reply when it is due, on one thread: the read waits
/// no longer than the next reply's due time.
fn answer_echoes(socket: &Socket, v6: bool, shared: &Shared) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut buffer = [0u8; 2048];
    while !shared.stopped() {
        let now = Instant::now();
        pending.retain(|due| {
            if due.at > now {
                return true;
            }
            if socket.send_to(&due.reply, &due.to).is_ok() {
                shared.count(true);
            }
            false
        });
        let wait = pending.iter().map(|due| due.at).min().map_or(POLL, |at| {
            at.saturating_duration_since(now)
                .clamp(Duration::from_millis(1), POLL)
        });
        if socket.set_read_timeout(Some(wait)).is_err() {
            return;
        }
        let Ok((len, from)) = recv_from(socket, &mut buffer) else {
            continue;
        };
        let Some(reply) = echo_reply(v6, &buffer[..len]) else {
            continue;
        };
        match shared.fate() {
            Some(delay) if pending.len() < MAX_PENDING => pending.push(Pending {
                at: Instant::now() + delay,
                to: from.into(),
                reply,
            }),
            _ => shared.count(false),
        }
    }
}

/// The echo reply to an echo request as a raw socket read it (IPv4 with its IP header, IPv6
/// without); `None` for anything else.
fn echo_reply(v6: bool, read: &[u8]) -> Option<Vec<u8>> {
    let (request, reply) = if v6 { (128, 129) } else { (8, 0) };
    let icmp = icmp_of(v6, read)?;
    if icmp.len() < 8 || icmp[0] != request || icmp[1] != 0 {
        return None;
    }
    Some(echo(v6, reply, icmp))
}

/// The ICMP message in what a raw socket read: IPv4 raw sockets deliver the IP header (its
/// IHL honoured), IPv6 ones do not.
fn icmp_of(v6: bool, read: &[u8]) -> Option<&[u8]> {
    if v6 {
        return Some(read);
    }
    let ihl = usize::from(read.first()? & 0x0f) * 4;
    if ihl < 20 || read.first()? >> 4 != 4 {
        return None;
    }
    read.get(ihl..)
}

/// `icmp` (an echo message: id, sequence and payload kept) as `kind`, checksummed for IPv4;
/// the kernel computes the ICMPv6 checksum of a raw ICMPv6 socket (RFC 3542 section 3.1).
fn echo(v6: bool, kind: u8, icmp: &[u8]) -> Vec<u8> {
    let mut message = icmp.to_vec();
    message[0] = kind;
    message[1] = 0;
    message[2..4].fill(0);
    if !v6 {
        let sum = checksum(&message);
        message[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    message
}

/// `recvfrom` into an initialised buffer.
fn recv_from(socket: &Socket, buffer: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    // SAFETY: an initialised `[u8]` is a valid `[MaybeUninit<u8>]` of the same length, and
    // recv only writes bytes into it.
    let uninit = unsafe { &mut *(std::ptr::from_mut(buffer) as *mut [MaybeUninit<u8>]) };
    let (len, from) = socket.recv_from(uninit)?;
    let from = from
        .as_socket()
        .ok_or_else(|| io::Error::other("an echo from a non-IP address"))?;
    Ok((len, from))
}

/// Accepts HTTP connections, each served on a thread of its own (bounded).
fn accept_http(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stopped() {
        let Ok((stream, _)) = listener.accept() else {
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        if shared.connections.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            shared.count(false);
            continue;
        }
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::clone(shared);
        thread::spawn(move || {
            serve_http(stream, &shared);
            shared.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Reads one request; answers a GET after its delay, or holds the connection unanswered
/// until the client gives up, [`HOLD`] passes or the responder stops.
fn serve_http(mut stream: TcpStream, shared: &Shared) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let Some(request) = read_request(&mut stream, shared) else {
        return;
    };
    if !request.starts_with(b"GET ") {
        let _ = stream.write_all(HTTP_REFUSED.as_bytes());
        return;
    }
    let Some(delay) = shared.fate() else {
        shared.count(false);
        let start = Instant::now();
        let mut buffer = [0u8; 512];
        while !shared.stopped() && start.elapsed() < HOLD {
            match stream.read(&mut buffer) {
                Ok(0) => return,
                Err(error) if !is_timeout(&error) => return,
                _ => {}
            }
        }
        return;
    };
    let due = Instant::now() + delay;
    while Instant::now() < due {
        if shared.stopped() {
            return;
        }
        thread::sleep(due.saturating_duration_since(Instant::now()).min(POLL));
    }
    if stream.write_all(HTTP_ANSWER.as_bytes()).is_ok() {
        shared.count(true);
    }
}

/// The request up to its blank line; `None` when the client closes, stalls past
/// [`REQUEST_TIMEOUT`] or sends more than 8 KiB of head.
fn read_request(stream: &mut TcpStream, shared: &Shared) -> Option<Vec<u8>> {
    let start = Instant::now();
    let mut request = Vec::new();
    let mut buffer = [0u8; 1024];
    while !shared.stopped() && start.elapsed() < REQUEST_TIMEOUT && request.len() <= 8192 {
        match stream.read(&mut buffer) {
            Ok(0) => return None,
            Ok(len) => {
                request.extend_from_slice(&buffer[..len]);
                if request.windows(4).any(|window| window == b"\r\n\r\n") {
                    return Some(request);
                }
            }
            Err(error) if is_timeout(&error) => {}
            Err(_) => return None,
        }
    }
    None
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Sends one ICMP echo request to `dst` with `SO_MARK` `mark` from the calling thread's
/// namespace, and waits up to `timeout` for its reply: the round trip, or `None`.
///
/// The socket is raw and sees every echo reply of the namespace; the reply is matched by
/// source, identifier and sequence.
pub fn ping(dst: IpAddr, mark: u32, seq: u16, timeout: Duration) -> io::Result<Option<Duration>> {
    static NEXT_ID: AtomicU16 = AtomicU16::new(0);
    let v6 = dst.is_ipv6();
    let socket = if v6 {
        Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?
    } else {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?
    };
    socket.set_mark(mark)?;
    let [.., high, low] = std::process::id().to_be_bytes();
    let id = u16::from_be_bytes([high, low]).wrapping_add(NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let mut request = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    request.extend_from_slice(&id.to_be_bytes());
    request.extend_from_slice(&seq.to_be_bytes());
    request.extend_from_slice(b"xdp-breakout quality probe");
    let request = echo(v6, request[0], &request);
    let start = Instant::now();
    socket.send_to(&request, &SocketAddr::new(dst, 0).into())?;
    let reply_kind = if v6 { 129 } else { 0 };
    let mut buffer = [0u8; 2048];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(None);
        }
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let (len, from) = match recv_from(&socket, &mut buffer) {
            Ok(read) => read,
            Err(error) if is_timeout(&error) => continue,
            Err(error) => return Err(error),
        };
        let Some(icmp) = icmp_of(v6, &buffer[..len]) else {
            continue;
        };
        if from.ip() == dst
            && icmp.len() >= 8
            && icmp[0] == reply_kind
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok(Some(start.elapsed()));
        }
    }
}

/// One HTTP/1.1 GET of `/` on `dst` over a TCP connection with `SO_MARK` `mark`, from the
/// calling thread's namespace: true when a `200` answer came within `timeout` (connect
/// included).
pub fn http_get(dst: SocketAddr, mark: u32, timeout: Duration) -> io::Result<bool> {
    let start = Instant::now();
    let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_mark(mark)?;
    if socket.connect_timeout(&dst.into(), timeout).is_err() {
        return Ok(false);
    }
    let mut stream = TcpStream::from(socket);
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(
        format!("GET / HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 512];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(false);
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(answer.starts_with(b"HTTP/1.1 200 ")),
            Ok(len) => answer.extend_from_slice(&buffer[..len]),
            Err(error) if is_timeout(&error) => {}
            Err(_) => return Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use harness_common::Rng;

    use super::{Emulation, checksum, echo, echo_reply, icmp_of};

    #[test]
    fn draws_delays_in_range_and_loses_the_share_asked() {
        let emulation = Emulation {
            delay: Duration::from_millis(5),
            spread: Duration::from_millis(20),
            loss: 0.3,
        };
        let mut rng = Rng::new(1);
        let fates: Vec<_> = (0..10_000).map(|_| emulation.draw(&mut rng)).collect();
        let lost = fates.iter().filter(|fate| fate.is_none()).count();
        assert!((2_700..3_300).contains(&lost), "{lost} of 10000 lost");
        assert!(fates.iter().flatten().all(|delay| {
            (Duration::from_millis(5)..Duration::from_millis(25)).contains(delay)
        }));
    }

    /// The RFC 3550 estimator (J += (|D| - J)/16) over drawn delays settles near spread/3.
    #[test]
    fn rfc3550_jitter_tends_to_a_third_of_the_spread() {
        let emulation = Emulation {
            delay: Duration::from_millis(5),
            spread: Duration::from_millis(30),
            loss: 0.0,
        };
        let mut rng = Rng::new(2);
        let delays: Vec<f64> = (0..20_000)
            .map(|_| emulation.draw(&mut rng).expect("no loss").as_secs_f64())
            .collect();
        let differences: Vec<f64> = delays
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).abs())
            .collect();
        let mean = differences.iter().sum::<f64>() / 19_999.0;
        let mut jitter = 0.0;
        for difference in &differences {
            jitter += (difference - jitter) / 16.0;
        }
        let expected = emulation.expected_jitter().as_secs_f64();
        assert!(
            (mean - expected).abs() < 0.000_5,
            "mean {mean}, expected {expected}"
        );
        assert!(
            (jitter - expected).abs() < 0.005,
            "jitter {jitter}, expected {expected}"
        );
    }

    #[test]
    fn answers_an_ipv4_echo_request_with_a_checksummed_reply() {
        let request = echo(false, 8, &[8, 0, 0, 0, 0x12, 0x34, 0, 7, b'h', b'i']);
        assert_eq!(checksum(&request), 0, "the request verifies");
        // An IPv4 header with IHL 6 (one option word) before it, as a raw socket reads it.
        let mut read = vec![0x46];
        read.extend_from_slice(&[0; 23]);
        read.extend_from_slice(&request);
        let reply = echo_reply(false, &read).expect("an echo request");
        assert_eq!(reply[0], 0, "echo reply");
        assert_eq!(&reply[4..], &request[4..], "id, sequence and payload kept");
        assert_eq!(checksum(&reply), 0, "the reply verifies");
        assert_eq!(icmp_of(false, &read[..10]), None, "a header cut short");
        assert_eq!(echo_reply(false, &[0x45; 28]), None, "not an echo request");
    }

    #[test]
    fn answers_an_icmpv6_echo_request_leaving_the_checksum_to_the_kernel() {
        let reply = echo_reply(true, &[128, 0, 0xab, 0xcd, 0, 1, 0, 2, 9]).expect("a request");
        assert_eq!(reply, [129, 0, 0, 0, 0, 1, 0, 2, 9]);
        assert_eq!(
            echo_reply(true, &[129, 0, 0, 0, 0, 1, 0, 2]),
            None,
            "a reply"
        );
    }
}
