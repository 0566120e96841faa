//! Just enough rtnetlink (`man 7 rtnetlink`, `include/uapi/linux/if_link.h`) to ask the kernel
//! what is attached to an interface and whether its link is up, and to hear when that
//! changes, without scraping `ip`'s output; and to list, add and delete policy routing rules
//! (`include/uapi/linux/fib_rules.h`), as `ip rule` does.

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

const FRA_DST: u16 = 1;
const FRA_PRIORITY: u16 = 6;
const FRA_FWMARK: u16 = 10;
const FRA_TABLE: u16 = 15;
const FRA_FWMASK: u16 = 16;
const FRA_PROTOCOL: u16 = 21;
/// `FR_ACT_TO_TBL`: look up the rule's table.
const FR_ACT_TO_TBL: u8 = 1;
/// `struct fib_rule_hdr`: family, dst_len, src_len, tos, table, res1, res2, action, flags.
const FIB_RULE_HDR: usize = 12;

/// A policy routing rule, as far as xdp-breakout reads and writes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub v6: bool,
    /// `to PREFIX`, if the rule has one.
    pub dst: Option<ipnet::IpNet>,
    pub table: u32,
    pub priority: Option<u32>,
    /// `FRA_PROTOCOL`: who installed it (`RTPROT_*`; 0 when the kernel did not say).
    pub protocol: u8,
    pub fwmark: Option<u32>,
    pub fwmask: Option<u32>,
    /// `FR_ACT_*`: 1 looks up `table`.
    pub action: u8,
}

impl Rule {
    /// `to ADDR/32` (or `/128`) `lookup TABLE priority PRIORITY proto PROTOCOL`.
    #[must_use]
    pub fn to_host(address: std::net::IpAddr, table: u32, priority: u32, protocol: u8) -> Self {
        Self {
            v6: address.is_ipv6(),
            dst: Some(ipnet::IpNet::from(address)),
            table,
            priority: Some(priority),
            protocol,
            fwmark: None,
            fwmask: None,
            action: FR_ACT_TO_TBL,
        }
    }

    /// The request body: `fib_rule_hdr` and the attributes this rule sets.
    fn encode(&self) -> Vec<u8> {
        let family = if self.v6 {
            libc::AF_INET6
        } else {
            libc::AF_INET
        };
        let mut body = vec![0u8; FIB_RULE_HDR];
        body[0] = u8::try_from(family).unwrap_or(0);
        body[1] = self.dst.map_or(0, |dst| dst.prefix_len());
        // Tables past 255 are only in FRA_TABLE; the header says RT_TABLE_UNSPEC.
        body[4] = u8::try_from(self.table).unwrap_or(0);
        body[7] = self.action;
        let mut attribute = |kind: u16, value: &[u8]| {
            let len = u16::try_from(4 + value.len()).unwrap_or(u16::MAX);
            body.extend_from_slice(&len.to_ne_bytes());
            body.extend_from_slice(&kind.to_ne_bytes());
            body.extend_from_slice(value);
            body.resize(body.len().next_multiple_of(4), 0);
        };
        if let Some(dst) = self.dst {
            match dst.addr() {
                std::net::IpAddr::V4(addr) => attribute(FRA_DST, &addr.octets()),
                std::net::IpAddr::V6(addr) => attribute(FRA_DST, &addr.octets()),
            }
        }
        if let Some(priority) = self.priority {
            attribute(FRA_PRIORITY, &priority.to_ne_bytes());
        }
        attribute(FRA_TABLE, &self.table.to_ne_bytes());
        if let Some(mark) = self.fwmark {
            attribute(FRA_FWMARK, &mark.to_ne_bytes());
        }
        if let Some(mask) = self.fwmask {
            attribute(FRA_FWMASK, &mask.to_ne_bytes());
        }
        if self.protocol != 0 {
            attribute(FRA_PROTOCOL, &[self.protocol]);
        }
        body
    }

    /// The rule of one `RTM_NEWRULE` message's body; `None` for another family.
    fn decode(body: &[u8]) -> Option<Self> {
        let header = body.get(..FIB_RULE_HDR)?;
        let v6 = match i32::from(header[0]) {
            libc::AF_INET => false,
            libc::AF_INET6 => true,
            _ => return None,
        };
        let mut rule = Self {
            v6,
            dst: None,
            table: u32::from(header[4]),
            priority: None,
            protocol: 0,
            fwmark: None,
            fwmask: None,
            action: header[7],
        };
        for (kind, value) in attributes(&body[FIB_RULE_HDR..]) {
            match kind {
                FRA_DST => {
                    let addr = match value.len() {
                        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(value).ok()?),
                        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(value).ok()?),
                        _ => return None,
                    };
                    rule.dst = ipnet::IpNet::new(addr, header[1]).ok();
                }
                FRA_PRIORITY => rule.priority = u32_at(value, 0),
                FRA_TABLE => rule.table = u32_at(value, 0).unwrap_or(rule.table),
                FRA_FWMARK => rule.fwmark = u32_at(value, 0),
                FRA_FWMASK => rule.fwmask = u32_at(value, 0),
                FRA_PROTOCOL => rule.protocol = value.first().copied().unwrap_or(0),
                _ => {}
            }
        }
        Some(rule)
    }
}

/// Every policy rule of this network namespace, IPv4 and IPv6 (`RTM_GETRULE` dump).
pub fn rules() -> io::Result<Vec<Rule>> {
    let mut found = Vec::new();
    for family in [libc::AF_INET, libc::AF_INET6] {
        let mut body = vec![0u8; FIB_RULE_HDR];
        body[0] = u8::try_from(family).unwrap_or(0);
        let flags = libc::NLM_F_REQUEST | libc::NLM_F_DUMP;
        for (kind, message) in transact(libc::RTM_GETRULE, flags, &body)? {
            if kind == libc::RTM_NEWRULE {
                found.extend(Rule::decode(&message));
            }
        }
    }
    Ok(found)
}

/// Adds `rule` (`ip rule add`); an identical rule already there is `EEXIST`.
pub fn add_rule(rule: &Rule) -> io::Result<()> {
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL;
    transact(libc::RTM_NEWRULE, flags, &rule.encode()).map(drop)
}

/// Deletes the first rule that matches `rule`'s attributes (`ip rule del`).
pub fn delete_rule(rule: &Rule) -> io::Result<()> {
    let flags = libc::NLM_F_REQUEST | libc::NLM_F_ACK;
    transact(libc::RTM_DELRULE, flags, &rule.encode()).map(drop)
}

/// Sends one request and reads its replies, `(type, body)` each, until the dump's
/// `NLMSG_DONE` or the acknowledgement; an error reply is the error.
fn transact(kind: u16, flags: i32, body: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
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
    let header = size_of::<libc::nlmsghdr>();
    let mut request = Vec::with_capacity(header + body.len());
    let len = u32::try_from(header + body.len()).map_err(|_| invalid("a long request"))?;
    request.extend_from_slice(&len.to_ne_bytes());
    request.extend_from_slice(&kind.to_ne_bytes());
    request.extend_from_slice(&u16::try_from(flags).unwrap_or(0).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(body);
    // SAFETY: sends the bytes of `request`, whose length is given.
    let sent = unsafe { libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut replies = Vec::new();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        // SAFETY: receives into `buffer`, whose length is given.
        let got =
            unsafe { libc::recv(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        let got = usize::try_from(got).map_err(|_| io::Error::last_os_error())?;
        let mut data = &buffer[..got];
        while let Some(len) = u32_at(data, 0).and_then(|len| usize::try_from(len).ok()) {
            if len < header || len > data.len() {
                return Err(invalid("a netlink message that runs off the end"));
            }
            let kind = u16_at(data, 4).unwrap_or(0);
            let message = &data[header..len];
            data = data.get(len.next_multiple_of(4)..).unwrap_or(&[]);
            match i32::from(kind) {
                libc::NLMSG_DONE => return Ok(replies),
                libc::NLMSG_ERROR => {
                    let code =
                        u32_at(message, 0).ok_or_else(|| invalid("a short netlink error"))?;
                    let code = i32::from_ne_bytes(code.to_ne_bytes());
                    if code == 0 {
                        return Ok(replies);
                    }
                    return Err(io::Error::from_raw_os_error(-code));
                }
                _ => replies.push((kind, message.to_vec())),
            }
        }
    }
}

/// `size_of_val` as the `u32`/`socklen_t` the kernel interfaces take.
fn size_u32<T>(value: &T) -> u32 {
    u32::try_from(size_of_val(value)).unwrap_or(u32::MAX)
}

/// Whether `addr` is link-local (169.254.0.0/16, fe80::/10): it never leaves its link, so it
/// is no uplink's egress address.
#[must_use]
pub fn link_local(addr: std::net::IpAddr) -> bool {
    match addr {
        std::net::IpAddr::V4(v4) => v4.is_link_local(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
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
                    let v4: libc::sockaddr_in = std::ptr::read_unaligned(ifaddr.ifa_addr.cast());
                    Some(std::net::IpAddr::from(v4.sin_addr.s_addr.to_ne_bytes()))
                }
                libc::AF_INET6 => {
                    let v6: libc::sockaddr_in6 = std::ptr::read_unaligned(ifaddr.ifa_addr.cast());
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
    fn a_rule_decodes_as_it_was_encoded() {
        for address in ["192.0.2.53", "2001:db8::53"] {
            let rule = Rule::to_host(address.parse().unwrap(), 70_000, 9365, 245);
            assert_eq!(
                Rule::decode(&rule.encode()),
                Some(rule.clone()),
                "{address}"
            );
        }
        let marked = Rule {
            v6: false,
            dst: None,
            table: 365,
            priority: Some(1000),
            protocol: 0,
            fwmark: Some(0x365),
            fwmask: Some(0xffff),
            action: FR_ACT_TO_TBL,
        };
        assert_eq!(Rule::decode(&marked.encode()), Some(marked));
    }

    #[test]
    fn rules_are_listed_unprivileged() {
        let rules = rules().expect("RTM_GETRULE works unprivileged");
        // Every namespace has the main table's rules, IPv4 and IPv6 alike.
        assert!(
            rules.iter().any(|rule| !rule.v6 && rule.table == 254),
            "{rules:?}"
        );
    }

    #[test]
    fn truncated_attributes_end_the_walk() {
        let data = [8u8, 0, 16, 0, 6, 0, 0, 0, 200, 0, 1, 0];
        let found: Vec<_> = attributes(&data).collect();
        assert_eq!(found, [(16, &[6u8, 0, 0, 0][..])]);
    }
}
