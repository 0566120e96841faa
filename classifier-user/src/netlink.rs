//! Just enough rtnetlink (`man 7 rtnetlink`, `include/uapi/linux/if_link.h`) to ask the kernel
//! what is attached to an interface and whether its link is up, and to hear when that
//! changes, without scraping `ip`'s output.

use std::{
    io,
    mem::{size_of, size_of_val},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const IFLA_OPERSTATE: u16 = 16;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `IF_OPER_UP` and `IF_OPER_UNKNOWN` (RFC 2863 operstates; veth and tun report unknown
/// while usable).
const IF_OPER_UP: u8 = 6;
const IF_OPER_UNKNOWN: u8 = 0;
/// `RTMGRP_LINK`: the multicast group of link changes.
const RTMGRP_LINK: u32 = 1;

const _: () = assert!(size_of::<libc::nlmsghdr>() == 16);

/// What one `RTM_NEWLINK` message says about an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    /// Administratively up, with carrier, and an operstate of up (or unknown, for virtual
    /// devices without one).
    pub up: bool,
    /// `XDP_ATTACHED_*` mode and program id, when an XDP program is attached.
    pub xdp: Option<(u8, u32)>,
}

#[repr(C)]
struct Request {
    header: libc::nlmsghdr,
    info: libc::ifinfomsg,
}

fn socket(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: a plain socket(2) call; the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_nl.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = u16::try_from(libc::AF_NETLINK).unwrap_or(16);
    address.nl_groups = groups;
    // SAFETY: binds to a valid sockaddr_nl of the size given.
    let bound = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const address).cast(),
            size_u32(&address),
        )
    };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Asks for interface `index` and returns what the kernel says.
pub fn link(index: i32) -> io::Result<Link> {
    let fd = socket(0)?;
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: a valid timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_u32(&timeout),
        );
    }
    // SAFETY: all-zero is a valid nlmsghdr and ifinfomsg.
    let mut request: Request = unsafe { std::mem::zeroed() };
    request.header.nlmsg_len = size_u32(&request);
    request.header.nlmsg_type = libc::RTM_GETLINK;
    request.header.nlmsg_flags = u16::try_from(libc::NLM_F_REQUEST).unwrap_or(1);
    request.header.nlmsg_seq = 1;
    request.info.ifi_family = u8::try_from(libc::AF_UNSPEC).unwrap_or(0);
    request.info.ifi_index = index;
    // SAFETY: sends the bytes of `request`, whose size is given.
    let sent = unsafe {
        libc::send(
            fd.as_raw_fd(),
            (&raw const request).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buffer = vec![0u8; 64 << 10];
    // SAFETY: receives into `buffer`, whose length is given.
    let got = unsafe { libc::recv(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
    let got = usize::try_from(got).map_err(|_| io::Error::last_os_error())?;
    messages(&buffer[..got])
        .next()
        .ok_or_else(|| invalid("an empty netlink reply"))?
}

/// The index of interface `name`, if it exists in this network namespace.
#[must_use]
pub fn index(name: &str) -> Option<i32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    i32::try_from(index).ok().filter(|index| *index != 0)
}

/// Link changes as the kernel announces them (`RTMGRP_LINK`), read without blocking the
/// runtime.
pub struct LinkMonitor {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl LinkMonitor {
    pub fn new() -> io::Result<Self> {
        let fd = socket(RTMGRP_LINK)?;
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        // SAFETY: the descriptor is owned by the AsyncFd and stays open and unchanged for as
        // long as it lives.
        let fd = unsafe { tokio::io::unix::AsyncFd::register(fd) }.map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    /// The next batch of link messages (any interface).
    pub async fn next(&mut self) -> io::Result<Vec<Link>> {
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            let mut guard = self.fd.readable_mut().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: receives into `buffer`, whose length is given.
                let got = unsafe {
                    libc::recv(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0)
                };
                usize::try_from(got).map_err(|_| io::Error::last_os_error())
            });
            match result {
                Ok(Ok(got)) => {
                    return Ok(messages(&buffer[..got]).filter_map(Result::ok).collect());
                }
                Ok(Err(error)) => return Err(error),
                Err(_would_block) => {}
            }
        }
    }
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// Each message of a reply: an error, or a link.
fn messages(mut data: &[u8]) -> impl Iterator<Item = io::Result<Link>> + '_ {
    std::iter::from_fn(move || {
        let len = usize::try_from(u32_at(data, 0)?).ok()?;
        if len < size_of::<libc::nlmsghdr>() || len > data.len() {
            return None;
        }
        let message = &data[..len];
        data = data.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some(parse(message))
    })
}

fn parse(message: &[u8]) -> io::Result<Link> {
    let header = size_of::<libc::nlmsghdr>();
    let kind = u16_at(message, 4).ok_or_else(|| invalid("a short netlink message"))?;
    if i32::from(kind) == libc::NLMSG_ERROR {
        let code = u32_at(message, header).ok_or_else(|| invalid("a short netlink error"))?;
        let code = i32::from_ne_bytes(code.to_ne_bytes());
        return Err(io::Error::from_raw_os_error(-code));
    }
    if kind != libc::RTM_NEWLINK && kind != libc::RTM_DELLINK {
        return Err(invalid("not a link message"));
    }
    // struct ifinfomsg { u8 family, u8 pad, u16 type, i32 index, u32 flags, u32 change }
    let info = message
        .get(header..header + size_of::<libc::ifinfomsg>())
        .ok_or_else(|| invalid("a short link message"))?;
    let index = i32::from_ne_bytes(
        info[4..8]
            .try_into()
            .map_err(|_| invalid("a short link message"))?,
    );
    let flags = u32_at(info, 8).unwrap_or(0);
    let attrs = &message[header + size_of::<libc::ifinfomsg>()..];
    let mut operstate = IF_OPER_UNKNOWN;
    let mut xdp = None;
    for (kind, value) in attributes(attrs) {
        match kind {
            IFLA_OPERSTATE => operstate = value.first().copied().unwrap_or(IF_OPER_UNKNOWN),
            IFLA_XDP => {
                let (mut attached, mut id) = (0u8, 0u32);
                for (kind, value) in attributes(value) {
                    match kind {
                        IFLA_XDP_ATTACHED => attached = value.first().copied().unwrap_or(0),
                        IFLA_XDP_PROG_ID => id = u32_at(value, 0).unwrap_or(0),
                        _ => {}
                    }
                }
                xdp = (attached != 0 && id != 0).then_some((attached, id));
            }
            _ => {}
        }
    }
    let carrier = flags & u32::try_from(libc::IFF_UP | libc::IFF_LOWER_UP).unwrap_or(0)
        == u32::try_from(libc::IFF_UP | libc::IFF_LOWER_UP).unwrap_or(0);
    Ok(Link {
        index,
        // A deleted interface is as down as one can be.
        up: kind == libc::RTM_NEWLINK
            && carrier
            && matches!(operstate, IF_OPER_UP | IF_OPER_UNKNOWN),
        xdp,
    })
}

/// `(type, payload)` of each netlink attribute in `data`, aligned to 4 bytes.
fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16_at(data, 0)?);
        let kind = u16_at(data, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = data.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        Some((kind, payload))
    })
}

/// `size_of_val` as the `u32`/`socklen_t` the kernel interfaces take.
fn size_u32<T>(value: &T) -> u32 {
    u32::try_from(size_of_val(value)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_up_and_has_no_xdp() {
        let lo = index("lo").expect("lo exists");
        let link = link(lo).expect("RTM_GETLINK works unprivileged");
        assert_eq!(link.index, lo);
        assert!(link.up, "{link:?}");
        assert_eq!(link.xdp, None);
        assert!(index("no-such-interface0").is_none());
    }

    #[test]
    fn truncated_attributes_end_the_walk() {
        let data = [8u8, 0, 16, 0, 6, 0, 0, 0, 200, 0, 1, 0];
        let found: Vec<_> = attributes(&data).collect();
        assert_eq!(found, [(16, &[6u8, 0, 0, 0][..])]);
    }
}

/// The IPv4 and IPv6 addresses of the interfaces named `names` in this network namespace
/// (`getifaddrs(3)`, which asks the kernel over rtnetlink), in the kernel's order.
pub fn addresses(names: &[String]) -> io::Result<Vec<std::net::IpAddr>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list that freeifaddrs releases below.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifaddr = unsafe { &*entry };
        entry = ifaddr.ifa_next;
        if ifaddr.ifa_addr.is_null() || ifaddr.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated interface name owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifaddr.ifa_name) };
        if !names
            .iter()
            .any(|wanted| wanted.as_bytes() == name.to_bytes())
        {
            continue;
        }
        // SAFETY: `ifa_addr` points at a sockaddr whose family says its real type.
        let address = unsafe {
            match i32::from((*ifaddr.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let v4 = &*ifaddr.ifa_addr.cast::<libc::sockaddr_in>();
                    Some(std::net::IpAddr::from(v4.sin_addr.s_addr.to_ne_bytes()))
                }
                libc::AF_INET6 => {
                    let v6 = &*ifaddr.ifa_addr.cast::<libc::sockaddr_in6>();
                    Some(std::net::IpAddr::from(v6.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        found.extend(address);
    }
    // SAFETY: the list getifaddrs returned, released once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}
