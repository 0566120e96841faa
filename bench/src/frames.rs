//! Ethernet frames for the benchmarks: UDP over IPv4 or IPv6, valid enough for the kernel's
//! receive path (IPv4 header checksum, destination MAC of the receiving interface).

use std::net::IpAddr;

/// Addresses of the sending and receiving side of the veth pair (also used in test runs).
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb0, 0x01];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xb0, 0x02];
pub const SRC_V4: [u8; 4] = [10, 200, 0, 2];
pub const SRC_V6: [u8; 16] = [0xfd, 0x00, 0xb0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// UDP port every benchmark packet goes to: Teams media, which every synthetic prefix lists.
pub const UDP_PORT: u16 = 3478;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;
/// A 64-byte frame on the wire for IPv4 (60 without the FCS).
const PAYLOAD: usize = 18;

/// A UDP frame to `dst`:`port`.
#[must_use]
pub fn udp(dst: IpAddr, port: u16) -> Vec<u8> {
    udp_from(4321, dst, port)
}

/// A UDP frame from source port `sport` to `dst`:`port`: one flow per source port.
#[must_use]
pub fn udp_from(sport: u16, dst: IpAddr, port: u16) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + PAYLOAD);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&port.to_be_bytes());
    udp.extend_from_slice(&u16_len(8 + PAYLOAD).to_be_bytes());
    // No UDP checksum: IPv4 allows it, and nothing on the measured path verifies it.
    udp.extend_from_slice(&[0, 0]);
    udp.extend(std::iter::repeat_n(0xab, PAYLOAD));

    let mut frame = Vec::with_capacity(14 + 40 + udp.len());
    frame.extend_from_slice(&DST_MAC);
    frame.extend_from_slice(&SRC_MAC);
    match dst {
        IpAddr::V4(dst) => {
            frame.extend_from_slice(&ETH_P_IP.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&u16_len(20 + udp.len()).to_be_bytes());
            ip[4..6].copy_from_slice(&[0x12, 0x34]);
            ip[8] = 64;
            ip[9] = IPPROTO_UDP;
            ip[12..16].copy_from_slice(&SRC_V4);
            ip[16..20].copy_from_slice(&dst.octets());
            let checksum = ipv4_checksum(&ip);
            ip[10..12].copy_from_slice(&checksum.to_be_bytes());
            frame.extend_from_slice(&ip);
        }
        IpAddr::V6(dst) => {
            frame.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
            frame.extend_from_slice(&[0x60, 0, 0, 0]);
            frame.extend_from_slice(&u16_len(udp.len()).to_be_bytes());
            frame.push(IPPROTO_UDP);
            frame.push(64);
            frame.extend_from_slice(&SRC_V6);
            frame.extend_from_slice(&dst.octets());
        }
    }
    frame.extend_from_slice(&udp);
    frame
}

fn u16_len(len: usize) -> u16 {
    u16::try_from(len).expect("benchmark frames are short")
}

/// RFC 1071 checksum of an IPv4 header whose checksum field is zero.
#[must_use]
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], pair[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
    !(sum as u16)
}
