//! DNS for the end-to-end tests: real resolvers (dnsmasq) in namespaces, a client socket that
//! asks and keeps the answers' bytes, DNS messages built and read with `hickory-proto`, and a
//! forger that sends one UDP packet with any source address and port (a raw socket), for the
//! answers nobody asked for.

use std::{
    fs,
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record, RecordType, rdata},
};

use crate::{Kill, netns::Netns};

/// How long a resolver may take to start (its pid file written: its sockets are bound).
const START: Duration = Duration::from_secs(10);

/// A dnsmasq configuration: where it listens (port 53) and what it answers, built up with the
/// methods below and started with [`Resolver::start`].
#[derive(Clone, Debug)]
pub struct Dnsmasq {
    listen: IpAddr,
    args: Vec<String>,
}

impl Dnsmasq {
    /// Answers on `listen`:53 only (`--bind-interfaces`), from its own records and the servers
    /// given; no `/etc/resolv.conf`, no `/etc/hosts`, no configuration file.
    ///
    /// # Panics
    ///
    /// On a typo in the address.
    #[must_use]
    pub fn new(listen: &str) -> Self {
        Self {
            listen: listen.parse().expect("address literal"),
            args: Vec::new(),
        }
    }

    /// `name` has the address `addr` (`--host-record`; an exact name).
    #[must_use]
    pub fn host_record(self, name: &str, addr: &str) -> Self {
        self.arg(format!("--host-record={name},{addr}"))
    }

    /// Every name under `zone`, and `zone` itself, has the address `addr` (`--address`).
    #[must_use]
    pub fn address(self, zone: &str, addr: &str) -> Self {
        self.arg(format!("--address=/{zone}/{addr}"))
    }

    /// `alias` is a CNAME of `target`, which must be one of its own records (`--cname`).
    #[must_use]
    pub fn cname(self, alias: &str, target: &str) -> Self {
        self.arg(format!("--cname={alias},{target}"))
    }

    /// Forwards what it does not know to `server` (`--server`; `/zone/addr` forms too).
    #[must_use]
    pub fn server(self, server: &str) -> Self {
        self.arg(format!("--server={server}"))
    }

    /// Reads more `server=` lines from `path`, again on SIGHUP (`--servers-file`). dnsmasq
    /// refuses to start without the file: the caller creates it (empty will do).
    #[must_use]
    pub fn servers_file(self, path: &Path) -> Self {
        self.arg(format!("--servers-file={}", path.display()))
    }

    /// The TTL of its own records (`--local-ttl`; dnsmasq's default is 0).
    #[must_use]
    pub fn local_ttl(self, seconds: u32) -> Self {
        self.arg(format!("--local-ttl={seconds}"))
    }

    /// Any other option, as dnsmasq takes it.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// A running dnsmasq, killed on drop (also when a test fails). Its queries are logged to a
/// file ([`Resolver::queries`]), so a test can say which resolver a name was asked of, and by
/// whom.
pub struct Resolver {
    process: Kill,
    /// Where it listens (port 53).
    pub address: IpAddr,
    /// `--log-queries` goes here.
    pub log: PathBuf,
    pub pid_file: PathBuf,
    /// Its stderr: why it refused to start.
    stderr: PathBuf,
}

/// One query a resolver logged: `query[A] NAME from ADDRESS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub qtype: String,
    pub name: String,
    pub from: IpAddr,
}

impl Resolver {
    /// Starts `config` in `netns`, its files in `dir` named for `name`; returns once it is
    /// listening. Missing dnsmasq is an error of kind `NotFound` (for the caller to skip).
    pub fn start(netns: &Netns, dir: &Path, name: &str, config: &Dnsmasq) -> io::Result<Self> {
        let log = dir.join(format!("{name}.queries.log"));
        let pid_file = dir.join(format!("{name}.pid"));
        let stderr = dir.join(format!("{name}.stderr"));
        let _ = fs::remove_file(&pid_file);
        // `nsenter` execs dnsmasq in place, so the child is dnsmasq itself.
        which("dnsmasq")?;
        let child: Child = netns
            .command("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--port=53",
                "--user=root",
                "--log-queries",
            ])
            .arg(format!("--listen-address={}", config.listen))
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!("--pid-file={}", pid_file.display()))
            .args(&config.args)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr)?)
            .spawn()?;
        let mut this = Self {
            process: Kill(child),
            address: config.listen,
            log,
            pid_file,
            stderr,
        };
        let start = Instant::now();
        while this.pid().is_none() {
            if let Some(status) = this.process.0.try_wait()? {
                return Err(io::Error::other(format!(
                    "dnsmasq {name} exited ({status}): {}",
                    fs::read_to_string(&this.stderr).unwrap_or_default()
                )));
            }
            if start.elapsed() > START {
                return Err(io::Error::other(format!(
                    "dnsmasq {name} wrote no pid file within {START:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(this)
    }

    /// Its process id, from its pid file (written once its sockets are bound).
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        fs::read_to_string(&self.pid_file).ok()?.trim().parse().ok()
    }

    /// Sends `signal` (SIGHUP: re-read `--servers-file` and clear the cache).
    ///
    /// # Panics
    ///
    /// When it is not running.
    pub fn signal(&self, signal: i32) {
        let pid = i32::try_from(self.pid().expect("a running resolver")).expect("pid");
        // SAFETY: kill(2) on our own child, not reaped before `self` is dropped.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill {pid}: {}", io::Error::last_os_error());
    }

    /// Stops it (SIGSTOP) until the guard is dropped (SIGCONT): queries wait in its socket,
    /// so a forged answer is sure to arrive before the real one.
    #[must_use]
    pub fn pause(&self) -> Paused<'_> {
        self.signal(libc::SIGSTOP);
        Paused(self)
    }

    /// Its log so far.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The queries it logged so far, in order.
    #[must_use]
    pub fn queries(&self) -> Vec<Logged> {
        parse_queries(&self.log())
    }

    /// Whether it was asked `name` (case and a trailing dot ignored), by `from` if given.
    #[must_use]
    pub fn asked(&self, name: &str, from: Option<&str>) -> bool {
        let name = name.trim_end_matches('.');
        self.queries().iter().any(|query| {
            query.name.eq_ignore_ascii_case(name)
                && from.is_none_or(|from| query.from == crate::ip(from))
        })
    }
}

/// A paused resolver ([`Resolver::pause`]), continued on drop.
pub struct Paused<'a>(&'a Resolver);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        self.0.signal(libc::SIGCONT);
    }
}

/// The `query[TYPE] NAME from ADDRESS` lines of a dnsmasq log.
#[must_use]
pub fn parse_queries(log: &str) -> Vec<Logged> {
    log.lines()
        .filter_map(|line| {
            let rest = &line[line.find(" query[")? + " query[".len()..];
            let (qtype, rest) = rest.split_once("] ")?;
            let (name, from) = rest.split_once(" from ")?;
            Some(Logged {
                qtype: qtype.to_owned(),
                name: name.to_owned(),
                from: from.trim().parse().ok()?,
            })
        })
        .collect()
}

fn which(program: &str) -> io::Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    if found {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{program} is not installed (cargo xtask setup installs it)"),
        ))
    }
}

/// A standard query for the A records of `name`, recursion desired.
///
/// # Panics
///
/// On a name that is no DNS name.
#[must_use]
pub fn query(id: u16, name: &str) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(
            Name::from_ascii(name).expect("a DNS name"),
            RecordType::A,
        ));
    message.to_vec().expect("a query encodes")
}

/// An answer with id `id` to the A question `question`: each of `addresses` as an A record of
/// the question's name with `ttl`, as a resolver would send it.
///
/// # Panics
///
/// On a name that is no DNS name, or an address that is no IPv4 address.
#[must_use]
pub fn answer(id: u16, question: &str, addresses: &[&str], ttl: u32) -> Vec<u8> {
    let name = Name::from_ascii(question).expect("a DNS name");
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_recursion_available(true)
        .set_response_code(ResponseCode::NoError)
        .add_query(Query::query(name.clone(), RecordType::A));
    for addr in addresses {
        let addr: Ipv4Addr = addr.parse().expect("IPv4 literal");
        message.add_answer(Record::from_rdata(
            name.clone(),
            ttl,
            RData::A(rdata::A(addr)),
        ));
    }
    message.to_vec().expect("an answer encodes")
}

/// A message's id, question names and A/AAAA addresses, for assertions and diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub id: u16,
    pub response: bool,
    pub questions: Vec<String>,
    pub addresses: Vec<IpAddr>,
}

/// Reads a DNS message.
///
/// # Errors
///
/// When it does not parse.
pub fn read(message: &[u8]) -> Result<Read, hickory_proto::ProtoError> {
    let message = Message::from_vec(message)?;
    Ok(Read {
        id: message.id(),
        response: message.message_type() == MessageType::Response,
        questions: message
            .queries()
            .iter()
            .map(|query| query.name().to_ascii().trim_end_matches('.').to_owned())
            .collect(),
        addresses: message
            .answers()
            .iter()
            .filter_map(|record| match record.data() {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                _ => None,
            })
            .collect(),
    })
}

/// A UDP socket of a namespace (bound there, usable from any thread): a client that sends
/// queries from one port and keeps the answers' bytes, or a receiver of forged ones.
pub struct DnsSocket {
    socket: UdpSocket,
}

impl DnsSocket {
    /// Binds `addr`, an ephemeral port, in `netns`.
    ///
    /// # Panics
    ///
    /// On a typo in the address.
    pub fn bind(netns: &Netns, addr: &str) -> io::Result<Self> {
        let addr: IpAddr = addr.parse().expect("address literal");
        let socket = netns.run(move || UdpSocket::bind(SocketAddr::new(addr, 0)))?;
        Ok(Self { socket })
    }

    /// Where it is bound.
    pub fn local(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Its port.
    ///
    /// # Panics
    ///
    /// When the socket has no address (it always has one once bound).
    #[must_use]
    pub fn port(&self) -> u16 {
        self.local().expect("a bound socket").port()
    }

    /// Sends `message` to `to`.
    pub fn send(&self, to: SocketAddr, message: &[u8]) -> io::Result<()> {
        self.socket.send_to(message, to).map(drop)
    }

    /// The next datagram within `timeout`, and who it says it is from.
    pub fn recv(&self, timeout: Duration) -> io::Result<(Vec<u8>, SocketAddr)> {
        self.socket.set_read_timeout(Some(timeout))?;
        let mut buffer = vec![0u8; 4096];
        let (len, from) = self.socket.recv_from(&mut buffer).map_err(|error| {
            if matches!(
                error.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nothing arrived within {timeout:?}"),
                )
            } else {
                error
            }
        })?;
        buffer.truncate(len);
        Ok((buffer, from))
    }

    /// Sends the query `id`/`name` to `resolver` and returns the answer's bytes (the first
    /// datagram with that id), within `timeout`.
    pub fn ask(
        &self,
        resolver: SocketAddr,
        id: u16,
        name: &str,
        timeout: Duration,
    ) -> io::Result<Vec<u8>> {
        self.send(resolver, &query(id, name))?;
        let start = Instant::now();
        loop {
            let left = timeout.checked_sub(start.elapsed()).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer to {name} from {resolver}"),
                )
            })?;
            let (bytes, from) = self
                .recv(left.max(Duration::from_millis(1)))
                .map_err(|error| io::Error::new(error.kind(), format!("{name}: {error}")))?;
            if from == resolver && read(&bytes).is_ok_and(|read| read.id == id) {
                return Ok(bytes);
            }
        }
    }
}

/// Sends one UDP datagram from `netns` with any source address and port (spoofed: a raw
/// socket writes the IPv4 header itself), to `dst`, routed as the namespace routes `dst`.
/// The kernel fills in the IP header's checksum and id; the UDP checksum is computed here.
pub fn forge_udp(
    netns: &Netns,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> io::Result<()> {
    let packet = ipv4_udp(src, dst, payload);
    netns.run(move || send_raw(dst, &packet))
}

/// An IPv4 header (no options, TTL 64) and a UDP header before `payload`.
///
/// # Panics
///
/// On a payload longer than a datagram.
#[must_use]
pub fn ipv4_udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp_len = u16::try_from(8 + payload.len()).expect("a datagram");
    let total = udp_len + 20;
    let mut packet = Vec::with_capacity(usize::from(total));
    packet.extend_from_slice(&[0x45, 0]);
    packet.extend_from_slice(&total.to_be_bytes());
    // id (0: the kernel picks one), no fragmentation, TTL 64, UDP, checksum (the kernel's).
    packet.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]);
    packet.extend_from_slice(&src.ip().octets());
    packet.extend_from_slice(&dst.ip().octets());
    let mut udp = Vec::with_capacity(usize::from(udp_len));
    udp.extend_from_slice(&src.port().to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12 + udp.len());
    pseudo.extend_from_slice(&src.ip().octets());
    pseudo.extend_from_slice(&dst.ip().octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&udp_len.to_be_bytes());
    pseudo.extend_from_slice(&udp);
    // RFC 768: a computed 0 is sent as all ones (0 means "no checksum").
    let sum = match checksum(&pseudo) {
        0 => 0xffff,
        sum => sum,
    };
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&udp);
    packet
}

/// The Internet checksum (RFC 1071) of `bytes`.
pub(crate) fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).expect("folded")
}

/// Sends a whole IPv4 packet on a raw socket (`IPPROTO_RAW` implies `IP_HDRINCL`) of the
/// calling thread's namespace.
fn send_raw(dst: SocketAddrV4, packet: &[u8]) -> io::Result<()> {
    // SAFETY: plain socket syscalls on a fd we own, closed on every path; the address struct
    // is zeroed and filled.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::sa_family_t::try_from(libc::AF_INET).expect("small");
        addr.sin_addr.s_addr = u32::from_ne_bytes(dst.ip().octets());
        let sent = libc::sendto(
            fd,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&raw const addr).cast(),
            u32::try_from(size_of::<libc::sockaddr_in>()).expect("small"),
        );
        let result = if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        };
        libc::close(fd);
        result
    }
}

/// Writes `text` to `path` whole (for files a resolver reads, such as an empty servers file).
pub fn write_file(path: &Path, text: &str) -> io::Result<()> {
    let mut file = fs::File::create(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::{checksum, ipv4_udp, parse_queries};

    #[test]
    fn a_udp_checksum_verifies() {
        let packet = ipv4_udp(
            "44.20.0.1:53".parse::<SocketAddrV4>().unwrap(),
            "10.0.1.2:40000".parse().unwrap(),
            b"abc",
        );
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&packet[12..20]);
        pseudo.extend_from_slice(&[0, 17, 0, 11]);
        pseudo.extend_from_slice(&packet[20..]);
        assert_eq!(
            checksum(&pseudo),
            0,
            "the sum over a checksummed segment is zero"
        );
        assert_eq!(packet.len(), 20 + 8 + 3);
    }

    #[test]
    fn query_lines_are_read_from_a_dnsmasq_log() {
        let log = "Dec  3 09:58:22 dnsmasq[12]: query[A] a1.svc.ms from 10.0.2.1\n\
                   Dec  3 09:58:22 dnsmasq[12]: forwarded a1.svc.ms to 44.30.0.53\n\
                   Dec  3 09:58:23 dnsmasq[12]: query[AAAA] x.example from fd00:1::2\n";
        let queries = parse_queries(log);
        assert_eq!(queries.len(), 2, "{queries:?}");
        assert_eq!(
            (queries[0].qtype.as_str(), queries[0].name.as_str()),
            ("A", "a1.svc.ms")
        );
        assert_eq!(queries[1].from, crate::ip("fd00:1::2"));
    }
}
