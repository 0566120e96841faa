//! Reading libpcap capture files (the classic format `tcpdump -w` writes).

use std::fmt;

/// `LINKTYPE_ETHERNET`.
pub const LINKTYPE_ETHERNET: u32 = 1;

#[derive(Debug, PartialEq, Eq)]
pub enum PcapError {
    NotPcap,
    LinkType(u32),
    Truncated { record: usize, offset: usize },
}

impl fmt::Display for PcapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPcap => f.write_str(
                "not a libpcap capture (pcapng is not read: convert it with `editcap -F pcap`)",
            ),
            Self::LinkType(link) => write!(f, "link type {link} is not Ethernet (1)"),
            Self::Truncated { record, offset } => {
                write!(f, "record {record} is cut short at byte {offset}")
            }
        }
    }
}

impl std::error::Error for PcapError {}

/// The captured bytes of each packet, in order.
pub fn packets(data: &[u8]) -> Result<Vec<&[u8]>, PcapError> {
    let magic = data.get(..4).ok_or(PcapError::NotPcap)?;
    // Microsecond or nanosecond timestamps, either byte order.
    let big = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => false,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => true,
        _ => return Err(PcapError::NotPcap),
    };
    let u32_at = |offset: usize| -> Option<u32> {
        let bytes: [u8; 4] = data.get(offset..offset + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(bytes)
        } else {
            u32::from_le_bytes(bytes)
        })
    };
    let link = u32_at(20).ok_or(PcapError::NotPcap)?;
    if link != LINKTYPE_ETHERNET {
        return Err(PcapError::LinkType(link));
    }
    let mut offset = 24;
    let mut packets = Vec::new();
    while offset < data.len() {
        let truncated = PcapError::Truncated {
            record: packets.len(),
            offset,
        };
        let captured = u32_at(offset + 8).ok_or(truncated)? as usize;
        let start = offset + 16;
        let packet = data
            .get(start..start + captured)
            .ok_or(PcapError::Truncated {
                record: packets.len(),
                offset,
            })?;
        packets.push(packet);
        offset = start + captured;
    }
    Ok(packets)
}

/// A capture of `frames` (microsecond timestamps, little endian), for tests and tools.
#[must_use]
pub fn write(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4_u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for word in [0u32, 0, 65535, LINKTYPE_ETHERNET] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    for (i, frame) in frames.iter().enumerate() {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        for word in [u32::try_from(i).unwrap_or(0), 0, len, len] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(frame);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_writes() {
        let frames = vec![vec![1u8; 60], vec![2u8; 14], vec![]];
        let data = write(&frames);
        let read = packets(&data).unwrap();
        assert_eq!(read, frames.iter().map(Vec::as_slice).collect::<Vec<_>>());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        assert_eq!(packets(b"hello world"), Err(PcapError::NotPcap));
        let mut data = write(&[vec![0u8; 60]]);
        data[20] = 113; // Linux cooked capture
        assert_eq!(packets(&data), Err(PcapError::LinkType(113)));
        let data = write(&[vec![0u8; 60]]);
        assert_eq!(
            packets(&data[..50]),
            Err(PcapError::Truncated {
                record: 0,
                offset: 24
            })
        );
    }
}
