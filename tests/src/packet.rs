//! Ethernet frames built layer by layer, for test rows that say what they carry.

use std::net::{IpAddr, SocketAddr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_DSTOPTS: u8 = 60;

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// The transport header of a packet.
#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp(u16),
    Udp(u16),
    /// An ICMP (or `ICMPv6`) echo request: no ports.
    Icmp,
}

/// An IPv6 extension header before the transport header.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOptions,
    /// A fragment header with this offset (in 8-octet units).
    Fragment {
        offset: u16,
    },
}

/// What a frame carries, from the outside in.
#[derive(Clone, Debug)]
pub struct Spec {
    /// TPIDs of the VLAN tags, outermost first.
    pub vlans: Vec<u16>,
    pub dst: IpAddr,
    pub l4: L4,
    /// IPv4 options length in bytes (a multiple of 4, at most 40).
    pub ipv4_options: usize,
    /// IPv4 fragment offset (8-octet units) and more-fragments flag.
    pub ipv4_fragment: (u16, bool),
    pub ipv6_ext: Vec<Ext>,
    pub payload: usize,
}

impl Spec {
    #[must_use]
    pub fn new(dst: IpAddr, l4: L4) -> Self {
        Self {
            vlans: Vec::new(),
            dst,
            l4,
            ipv4_options: 0,
            ipv4_fragment: (0, false),
            ipv6_ext: Vec::new(),
            payload: 16,
        }
    }

    #[must_use]
    pub fn vlans(mut self, tpids: &[u16]) -> Self {
        self.vlans = tpids.to_vec();
        self
    }

    #[must_use]
    pub const fn ipv4_options(mut self, len: usize) -> Self {
        self.ipv4_options = len;
        self
    }

    #[must_use]
    pub const fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        self.ipv4_fragment = (offset, more);
        self
    }

    #[must_use]
    pub fn ipv6_ext(mut self, ext: &[Ext]) -> Self {
        self.ipv6_ext = ext.to_vec();
        self
    }

    /// Length of every header, without payload: truncating below it is malformed.
    #[must_use]
    pub fn header_len(&self) -> usize {
        self.build().len() - self.payload_len_in_frame()
    }

    fn payload_len_in_frame(&self) -> usize {
        if self.later_fragment() {
            self.payload + l4_len(self.l4)
        } else {
            self.payload
        }
    }

    fn later_fragment(&self) -> bool {
        match self.dst {
            IpAddr::V4(_) => self.ipv4_fragment.0 != 0,
            IpAddr::V6(_) => self
                .ipv6_ext
                .iter()
                .any(|ext| matches!(ext, Ext::Fragment { offset } if *offset != 0)),
        }
    }

    /// The frame's bytes.
    ///
    /// # Panics
    ///
    /// When a length does not fit its header field (a spec no test should write).
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&DST_MAC);
        frame.extend_from_slice(&SRC_MAC);
        // A tag is its TPID and a TCI (VLAN 100); the EtherType follows the last tag.
        for tpid in &self.vlans {
            frame.extend_from_slice(&tpid.to_be_bytes());
            frame.extend_from_slice(&100u16.to_be_bytes());
        }
        let ip_proto = match (self.l4, self.dst) {
            (L4::Tcp(_), _) => IPPROTO_TCP,
            (L4::Udp(_), _) => IPPROTO_UDP,
            (L4::Icmp, IpAddr::V4(_)) => IPPROTO_ICMP,
            (L4::Icmp, IpAddr::V6(_)) => IPPROTO_ICMPV6,
        };
        let mut l4 = l4_header(self.l4);
        l4.extend(std::iter::repeat_n(0xab, self.payload));
        match self.dst {
            IpAddr::V4(dst) => {
                frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let ihl = 5 + self.ipv4_options / 4;
                let total = ihl * 4 + l4.len();
                let (offset, more) = self.ipv4_fragment;
                let frag = (u16::from(more) << 13) | offset;
                frame.push(0x40 | u8::try_from(ihl).expect("IHL fits"));
                frame.push(0);
                frame.extend_from_slice(&u16::try_from(total).expect("short").to_be_bytes());
                frame.extend_from_slice(&[0x12, 0x34]);
                frame.extend_from_slice(&frag.to_be_bytes());
                frame.extend_from_slice(&[64, ip_proto, 0, 0]);
                frame.extend_from_slice(&[192, 0, 2, 1]);
                frame.extend_from_slice(&dst.octets());
                // NOP options.
                frame.extend(std::iter::repeat_n(1u8, self.ipv4_options));
            }
            IpAddr::V6(dst) => {
                frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let mut ext_bytes = Vec::new();
                let mut kinds: Vec<u8> = self
                    .ipv6_ext
                    .iter()
                    .map(|ext| match ext {
                        Ext::HopByHop => IPPROTO_HOPOPTS,
                        Ext::Routing => IPPROTO_ROUTING,
                        Ext::DestOptions => IPPROTO_DSTOPTS,
                        Ext::Fragment { .. } => IPPROTO_FRAGMENT,
                    })
                    .collect();
                kinds.push(ip_proto);
                for (ext, next) in self.ipv6_ext.iter().zip(&kinds[1..]) {
                    if let Ext::Fragment { offset } = ext {
                        ext_bytes.extend_from_slice(&[*next, 0]);
                        ext_bytes.extend_from_slice(&((offset << 3) | 1).to_be_bytes());
                        ext_bytes.extend_from_slice(&[0, 0, 0, 1]);
                    } else {
                        // 16 bytes: next header, length 1 (8-octet units after the first
                        // 8), then PadN.
                        ext_bytes.extend_from_slice(&[*next, 1, 1, 12]);
                        ext_bytes.extend(std::iter::repeat_n(0u8, 12));
                    }
                }
                let payload_len = ext_bytes.len() + l4.len();
                frame.extend_from_slice(&[0x60, 0, 0, 0]);
                frame.extend_from_slice(&u16::try_from(payload_len).expect("short").to_be_bytes());
                frame.extend_from_slice(&[kinds[0], 64]);
                frame.extend_from_slice(
                    &"2001:db8::1"
                        .parse::<std::net::Ipv6Addr>()
                        .expect("literal")
                        .octets(),
                );
                frame.extend_from_slice(&dst.octets());
                frame.extend_from_slice(&ext_bytes);
            }
        }
        frame.extend_from_slice(&l4);
        frame
    }
}

fn l4_len(l4: L4) -> usize {
    l4_header(l4).len()
}

fn l4_header(l4: L4) -> Vec<u8> {
    match l4 {
        L4::Tcp(port) => {
            let mut tcp = vec![0u8; 20];
            tcp[..2].copy_from_slice(&40000u16.to_be_bytes());
            tcp[2..4].copy_from_slice(&port.to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = 0x02;
            tcp
        }
        L4::Udp(port) => {
            let mut udp = vec![0u8; 8];
            udp[..2].copy_from_slice(&40000u16.to_be_bytes());
            udp[2..4].copy_from_slice(&port.to_be_bytes());
            udp
        }
        L4::Icmp => vec![8, 0, 0, 0, 0, 1, 0, 1],
    }
}

/// A frame of another `EtherType` (ARP, ...), padded to the Ethernet minimum.
#[must_use]
pub fn non_ip(ether_type: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.resize(60, 0);
    frame
}

/// The resolver and the client of [`dns_answer_frame`] and [`dns_query_frame`].
pub const RESOLVER: &str = "10.0.3.2:53";
pub const CLIENT: &str = "10.0.1.2:40000";

/// An Ethernet/IPv4/UDP frame from a resolver's port 53 to a client's port 40000 carrying
/// `message`: a DNS answer on its way to the LAN, as `breakout_dns` sees it at tc egress.
///
/// # Panics
///
/// When `message` does not fit in one IPv4 packet.
#[must_use]
pub fn dns_answer_frame(message: &[u8]) -> Vec<u8> {
    udp_frame(parse(RESOLVER), parse(CLIENT), message)
}

/// The query that [`dns_answer_frame`] answers: from the client to the resolver.
#[must_use]
pub fn dns_query_frame(message: &[u8]) -> Vec<u8> {
    udp_frame(parse(CLIENT), parse(RESOLVER), message)
}

fn parse(address: &str) -> SocketAddr {
    address.parse().expect("a literal address")
}

/// An Ethernet/IP/UDP frame from `src` to `dst` (both of one family) carrying `payload`,
/// checksums zero (UDP over IPv4 allows it; the programs read no checksum).
///
/// # Panics
///
/// When the families differ or `payload` does not fit in one packet.
#[must_use]
pub fn udp_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    let udp_len = u16::try_from(8 + payload.len()).expect("fits");
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
            frame.extend_from_slice(&[0x45, 0]);
            frame.extend_from_slice(&(20 + udp_len).to_be_bytes());
            frame.extend_from_slice(&[0, 1, 0, 0, 64, IPPROTO_UDP, 0, 0]);
            frame.extend_from_slice(&from.octets());
            frame.extend_from_slice(&to.octets());
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            frame.extend_from_slice(&[0x60, 0, 0, 0]);
            frame.extend_from_slice(&udp_len.to_be_bytes());
            frame.extend_from_slice(&[IPPROTO_UDP, 64]);
            frame.extend_from_slice(&from.octets());
            frame.extend_from_slice(&to.octets());
        }
        _ => panic!("{src} and {dst} are of two families"),
    }
    frame.extend_from_slice(&src.port().to_be_bytes());
    frame.extend_from_slice(&dst.port().to_be_bytes());
    frame.extend_from_slice(&udp_len.to_be_bytes());
    frame.extend_from_slice(&[0, 0]);
    frame.extend_from_slice(payload);
    frame
}
