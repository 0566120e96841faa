//! Header parsing shared by the XDP and tc programs.
//!
//! A [`Cursor`] walks the packet from the Ethernet header on; each `parse_<header>` makes one
//! bounds check, advances the cursor and returns what comes next. Every loop is bounded so
//! that the verifier can see its end. Fields are read through network-types accessors or as
//! the raw bytes of the header (addresses stay in network order).

use core::{marker::PhantomData, mem::size_of};

use classifier_common::{DNS_MAX_MESSAGE, DNS_MAX_NAME, FNV_OFFSET, fnv_step, proto};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

/// 802.1ad outer tag plus 802.1Q inner tag.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before the packet counts as malformed. RFC 8200 section 4.1
/// recommends at most one of each, with destination options twice: 5. Leave some room.
const MAX_EXT_HDRS: usize = 8;

/// Why a packet could not be classified. It passes untouched either way.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Unparsed {
    /// Not IPv4 or IPv6.
    NotIp,
    /// Truncated, or a header field is invalid.
    Malformed,
}

/// An address, as the bytes of the header: IPv4 in the first four bytes, the rest zero.
///
/// A struct, not an enum of a 4- and a 16-byte variant: an enum leaves 12 bytes of an IPv4
/// address undefined, and LLVM may keep them in a register it later spills, which the
/// verifier refuses (`!read_ok`).
#[derive(Clone, Copy)]
pub struct Addr {
    pub v6: bool,
    pub bytes: [u8; 16],
}

impl Addr {
    #[inline(always)]
    fn v4(addr: [u8; 4]) -> Self {
        let mut bytes = [0; 16];
        bytes[..4].copy_from_slice(&addr);
        Self { v6: false, bytes }
    }

    #[inline(always)]
    fn v6(bytes: [u8; 16]) -> Self {
        Self { v6: true, bytes }
    }

    /// The IPv4 address (meaningful when not `v6`).
    #[inline(always)]
    #[must_use]
    pub fn v4_bytes(&self) -> [u8; 4] {
        [self.bytes[0], self.bytes[1], self.bytes[2], self.bytes[3]]
    }
}

/// What the classifier needs from a packet.
#[derive(Clone, Copy)]
pub struct Packet {
    pub dst: Addr,
    /// The source address (same family as `dst`).
    pub src: Addr,
    /// TCP or UDP source port, host order; 0 otherwise.
    pub sport: u16,
    /// A TCP segment with FIN or RST: the connection ends.
    pub tcp_end: bool,
    /// The upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    /// TCP or UDP destination port, host order (0 without one; see [`Packet::port`]); for
    /// non-first fragments.
    pub dport: u16,
    /// `dport` holds a port: TCP or UDP, not a later fragment. (Not an `Option<u16>`: a
    /// `None` leaves its payload undefined, which LLVM may spill, and the verifier refuses.)
    pub has_port: bool,
    /// A non-first fragment: its ports are in the first fragment.
    pub later_fragment: bool,
}

/// A position in a packet that lives for `'a` (one program run), checked against the
/// packet's end before every read.
pub struct Cursor<'a> {
    pos: usize,
    end: usize,
    packet: PhantomData<&'a [u8]>,
}

impl Cursor<'_> {
    /// # Safety
    ///
    /// `start .. end` must be the packet's bytes, valid for the cursor's lifetime.
    #[inline(always)]
    #[must_use]
    pub unsafe fn new(start: usize, end: usize) -> Self {
        Self {
            pos: start,
            end,
            packet: PhantomData,
        }
    }
}

impl<'a> Cursor<'a> {
    /// Where the cursor is: after [`parse`], the start of the TCP or UDP payload.
    #[inline(always)]
    #[must_use]
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The header of type `T` at the cursor, which moves past it.
    #[inline(always)]
    fn take<T>(&mut self) -> Result<&'a T, Unparsed> {
        let start = self.pos;
        if start + size_of::<T>() > self.end {
            return Err(Unparsed::Malformed);
        }
        self.pos = start + size_of::<T>();
        // SAFETY: the bytes are inside the packet (checked above) and every network-types
        // header is made of byte arrays and integers that accept any bit pattern; the
        // packet outlives the program invocation that holds the cursor.
        Ok(unsafe { &*(start as *const T) })
    }

    /// Moves the cursor `len` bytes on; the next `take` checks the bound.
    #[inline(always)]
    fn skip(&mut self, len: usize) {
        self.pos += len;
    }
}

/// Parses Ethernet, up to two VLAN tags, IPv4 or IPv6 (with extension headers) and the TCP or
/// UDP ports (and TCP's FIN and RST, which end a flow).
#[inline(always)]
pub fn parse(cursor: &mut Cursor<'_>) -> Result<Packet, Unparsed> {
    match parse_ethernet(cursor)? {
        ETH_P_IP => parse_ipv4(cursor),
        ETH_P_IPV6 => parse_ipv6(cursor),
        _ => Err(Unparsed::NotIp),
    }
}

/// Returns the EtherType after the VLAN tags, host order.
#[inline(always)]
fn parse_ethernet(cursor: &mut Cursor<'_>) -> Result<u16, Unparsed> {
    let eth: &EthHdr = cursor.take()?;
    let mut ether_type = u16::from_be(eth.ether_type);
    for _ in 0..MAX_VLAN_TAGS {
        if ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD {
            return Ok(ether_type);
        }
        let vlan: &VlanHdr = cursor.take()?;
        ether_type = u16::from_be(vlan.ether_type);
    }
    // A third tag is more than an edge router's LAN carries: not ours to classify.
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        return Err(Unparsed::NotIp);
    }
    Ok(ether_type)
}

#[inline(always)]
fn parse_ipv4(cursor: &mut Cursor<'_>) -> Result<Packet, Unparsed> {
    let ip: &Ipv4Hdr = cursor.take()?;
    let header_len = usize::from(ip.ihl());
    if ip.version() != 4 || header_len < Ipv4Hdr::LEN {
        return Err(Unparsed::Malformed);
    }
    let (dst, src) = (Addr::v4(ip.dst_addr), Addr::v4(ip.src_addr));
    let proto = ip.proto;
    // Options: the IHL is at most 15 words, so this is at most 40 bytes.
    cursor.skip(header_len - Ipv4Hdr::LEN);
    if ip.frag_offset() != 0 {
        return Ok(Packet {
            dst,
            src,
            sport: 0,
            tcp_end: false,
            proto,
            dport: 0,
            has_port: false,
            later_fragment: true,
        });
    }
    let ports = parse_ports(cursor, proto)?;
    Ok(Packet {
        dst,
        src,
        sport: ports.source,
        tcp_end: ports.end,
        proto,
        dport: ports.destination,
        has_port: ports.has_destination,
        later_fragment: false,
    })
}

#[inline(always)]
fn parse_ipv6(cursor: &mut Cursor<'_>) -> Result<Packet, Unparsed> {
    let ip: &Ipv6Hdr = cursor.take()?;
    if ip.version() != 6 {
        return Err(Unparsed::Malformed);
    }
    let (dst, src) = (Addr::v6(ip.dst_addr), Addr::v6(ip.src_addr));
    let mut next = ip.next_hdr;
    for _ in 0..MAX_EXT_HDRS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                next = parse_ipv6_option_header(cursor)?;
            }
            IPPROTO_FRAGMENT => {
                let (next_hdr, first) = parse_ipv6_fragment_header(cursor)?;
                if !first {
                    return Ok(Packet {
                        dst,
                        src,
                        sport: 0,
                        tcp_end: false,
                        proto: next_hdr,
                        dport: 0,
                        has_port: false,
                        later_fragment: true,
                    });
                }
                next = next_hdr;
            }
            _ => {
                let ports = parse_ports(cursor, next)?;
                return Ok(Packet {
                    dst,
                    src,
                    sport: ports.source,
                    tcp_end: ports.end,
                    proto: next,
                    dport: ports.destination,
                    has_port: ports.has_destination,
                    later_fragment: false,
                });
            }
        }
    }
    Err(Unparsed::Malformed)
}

/// Hop-by-hop, routing and destination options share a layout: next header, then the length in
/// 8-octet units not counting the first 8 (RFC 8200 section 4.3).
#[inline(always)]
fn parse_ipv6_option_header(cursor: &mut Cursor<'_>) -> Result<u8, Unparsed> {
    let header: &[u8; 2] = cursor.take()?;
    let len = (usize::from(header[1]) + 1) * 8;
    cursor.skip(len - 2);
    Ok(header[0])
}

/// Returns the next header and whether this is the first fragment (offset 0).
#[inline(always)]
fn parse_ipv6_fragment_header(cursor: &mut Cursor<'_>) -> Result<(u8, bool), Unparsed> {
    // next header, reserved, offset (13 bits) | res (2) | M (1), identification.
    let header: &[u8; 8] = cursor.take()?;
    let offset = u16::from_be_bytes([header[2], header[3]]) >> 3;
    Ok((header[0], offset == 0))
}

impl Packet {
    /// The destination port, `None` without one.
    #[inline(always)]
    #[must_use]
    pub fn port(&self) -> Option<u16> {
        if self.has_port {
            Some(self.dport)
        } else {
            None
        }
    }
}

/// What the transport header says.
struct Ports {
    /// Host order; `None` for protocols without ports.
    destination: u16,
    /// TCP or UDP: `destination` holds a port.
    has_destination: bool,
    /// Host order; 0 without ports.
    source: u16,
    /// TCP FIN or RST.
    end: bool,
}

/// The ports of TCP and UDP, whose header must be whole, and TCP's FIN and RST.
#[inline(always)]
fn parse_ports(cursor: &mut Cursor, ip_proto: u8) -> Result<Ports, Unparsed> {
    match ip_proto {
        proto::TCP => {
            let tcp: &TcpHdr = cursor.take()?;
            Ok(Ports {
                destination: u16::from_be_bytes(tcp.dest),
                has_destination: true,
                source: u16::from_be_bytes(tcp.source),
                end: tcp.fin() != 0 || tcp.rst() != 0,
            })
        }
        proto::UDP => {
            let udp: &UdpHdr = cursor.take()?;
            Ok(Ports {
                destination: udp.dst_port(),
                has_destination: true,
                source: udp.src_port(),
                end: false,
            })
        }
        _ => Ok(Ports {
            destination: 0,
            has_destination: false,
            source: 0,
            end: false,
        }),
    }
}

/// What an answer must echo of its query: the message id, and the question's name (as
/// [`classifier_common::dns_name_hash`] hashes it) and type.
#[derive(Clone, Copy)]
pub struct Question {
    pub id: u16,
    pub name_hash: u32,
    pub qtype: u16,
}

/// Reads the DNS header and the one question of a message copied out of the packet (`len`
/// bytes of `message`): a standard query (`answer` false) or an answer to one (`answer`
/// true), with exactly one question. `None` for anything else.
///
/// Every read is at a constant offset of the copy, so the walk leaves no packet pointer
/// behind and the code after it is verified once, whichever byte ended the name. The name
/// is hashed up to its first zero byte, at most [`DNS_MAX_NAME`] bytes: in a real name that
/// is the root's, which ends it. Nothing here reads the labels' lengths, so each byte takes
/// one branch (zero or not) and the verifier keeps one state per byte instead of one per way
/// of cutting the name into labels. The agent walks the labels of what the kernel matched
/// ([`classifier_common::dns_name_hash`]) and refuses a name whose walk does not end there.
#[inline(always)]
#[must_use]
pub fn dns_question_in(
    message: &[u8; DNS_MAX_MESSAGE],
    len: usize,
    answer: bool,
) -> Option<Question> {
    if len < 12 + 1 + 4 {
        return None;
    }
    let qr = message[2] & 0x80 != 0;
    let opcode = (message[2] >> 3) & 0x0f;
    if qr != answer || opcode != 0 || message[4] != 0 || message[5] != 1 {
        return None;
    }
    let id = u16::from_be_bytes([message[0], message[1]]);
    let mut hash = FNV_OFFSET;
    for i in 12..12 + DNS_MAX_NAME {
        // The type's two bytes follow the name.
        if i + 2 >= len {
            return None;
        }
        let byte = *message.get(i)?;
        hash = fnv_step(hash, byte);
        if byte == 0 {
            return Some(Question {
                id,
                name_hash: hash,
                qtype: u16::from_be_bytes([*message.get(i + 1)?, *message.get(i + 2)?]),
            });
        }
    }
    None
}
