//! Attaching and detaching: the XDP and tc ingress links of each interface, pinned so that
//! they outlive the process, and what the kernel says is attached to an interface.

use std::{
    fs, io,
    mem::{size_of, size_of_val},
    path::Path,
};

use aya::programs::{
    ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    tc::{self, SchedClassifierLink, SchedClassifierLinkId},
    xdp::{XdpLink, XdpLinkId},
};

use super::{
    Datapath, DatapathError,
    pins::{check_pin_dir, tc_link_pin, xdp_link_pin},
};

/// A program kind whose links xdp-breakout pins: XDP and tc (tcx).
trait PinnedAttach {
    type Link: TryFrom<FdLink, Error = LinkError>;
    type Id;
    /// For messages: `XDP`, `tc`.
    const KIND: &'static str;
    fn attach_to_link(&mut self, link: Self::Link) -> Result<Self::Id, ProgramError>;
    fn take_link(&mut self, id: Self::Id) -> Result<Self::Link, ProgramError>;
    fn into_fd_link(link: Self::Link) -> Result<FdLink, LinkError>;
}

impl PinnedAttach for Xdp {
    type Link = XdpLink;
    type Id = XdpLinkId;
    const KIND: &'static str = "XDP";
    fn attach_to_link(&mut self, link: XdpLink) -> Result<XdpLinkId, ProgramError> {
        Self::attach_to_link(self, link)
    }
    fn take_link(&mut self, id: XdpLinkId) -> Result<XdpLink, ProgramError> {
        Self::take_link(self, id)
    }
    fn into_fd_link(link: XdpLink) -> Result<FdLink, LinkError> {
        link.try_into()
    }
}

impl PinnedAttach for SchedClassifier {
    type Link = SchedClassifierLink;
    type Id = SchedClassifierLinkId;
    const KIND: &'static str = "tc";
    fn attach_to_link(
        &mut self,
        link: SchedClassifierLink,
    ) -> Result<SchedClassifierLinkId, ProgramError> {
        Self::attach_to_link(self, link)
    }
    fn take_link(
        &mut self,
        id: SchedClassifierLinkId,
    ) -> Result<SchedClassifierLink, ProgramError> {
        Self::take_link(self, id)
    }
    fn into_fd_link(link: SchedClassifierLink) -> Result<FdLink, LinkError> {
        link.try_into()
    }
}

/// The one sequence for both link kinds: adopt the link pinned at `pin` and swap the loaded
/// program into it (no gap), or attach anew and pin the new link. A pin that exists but is
/// not a link of this kind is refused: attaching anew next to it would leave a link that
/// nothing pins, which dies with this process while the command reports success.
fn adopt_or_attach<P: PinnedAttach>(
    program: &mut P,
    iface: &str,
    pin: &Path,
    attach_new: impl FnOnce(&mut P) -> Result<P::Id, ProgramError>,
    attach_what: &str,
) -> Result<(), DatapathError> {
    let error = |what: String| {
        let iface = iface.to_owned();
        move |source: Box<dyn std::error::Error + Send + Sync>| DatapathError::Attach {
            iface,
            what,
            source,
        }
    };
    let kind = P::KIND;
    let adopted = match PinnedLink::from_pin(pin) {
        Ok(pinned) => Some(P::Link::try_from(FdLink::from(pinned)).map_err(|e| {
            error(format!(
                "{} is not an xdp-breakout {kind} link (remove it, or detach first)",
                pin.display()
            ))(e.into())
        })?),
        Err(_) if pin.exists() || pin.is_symlink() => {
            return Err(DatapathError::StalePin {
                iface: iface.to_owned(),
                path: pin.to_owned(),
                kind,
            });
        }
        Err(_) => None,
    };
    let is_new = adopted.is_none();
    let id = match adopted {
        Some(link) => program
            .attach_to_link(link)
            .map_err(|e| error(format!("replacing the {kind} program"))(e.into()))?,
        None => attach_new(program).map_err(|e| error(attach_what.to_owned())(e.into()))?,
    };
    let link = program
        .take_link(id)
        .map_err(|e| error(format!("taking the {kind} link"))(e.into()))?;
    let link = P::into_fd_link(link).map_err(|e| {
        error(format!(
            "{kind} attached without a bpf_link (kernel older than 6.6?)"
        ))(e.into())
    })?;
    if is_new {
        link.pin(pin)
            .map_err(|e| error(format!("pinning the {kind} link"))(e.into()))?;
    }
    // An adopted link is pinned already; closing our descriptor leaves it attached.
    Ok(())
}

impl Datapath {
    /// Attaches XDP and tc ingress to `iface` and pins both links, or, when this pin directory
    /// already has links for it, swaps the loaded programs into them without a gap.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<(), DatapathError> {
        let pin_dir = self.pin_dir.clone().ok_or(DatapathError::Unpinned)?;
        let xdp_pin = xdp_link_pin(&pin_dir, iface);
        if !xdp_pin.exists()
            && let Some(AttachedXdp { id, name, .. }) = attached_xdp(iface)
        {
            return Err(DatapathError::ForeignXdp {
                iface: iface.to_owned(),
                name,
                id,
            });
        }
        adopt_or_attach(
            self.xdp()?,
            iface,
            &xdp_pin,
            |xdp| xdp.attach(iface, mode),
            &xdp_attach_hint(mode),
        )?;
        adopt_or_attach(
            self.tc()?,
            iface,
            &tc_link_pin(&pin_dir, iface),
            |classifier| {
                // tcx (6.6+) needs no qdisc; older kernels need clsact. Adding it is harmless.
                if let Err(error) = tc::qdisc_add_clsact(iface) {
                    log::debug!("{iface}: clsact qdisc: {error}");
                }
                classifier.attach(iface, TcAttachType::Ingress)
            },
            "attaching the tc ingress program",
        )
    }
}

fn xdp_attach_hint(mode: XdpMode) -> String {
    match mode {
        XdpMode::Driver => {
            "attaching XDP in native mode (if the driver lacks native XDP, try --mode skb)"
                .to_owned()
        }
        _ => "attaching XDP".to_owned(),
    }
}

/// Detaches xdp-breakout from `iface` by removing its link pins (the kernel releases a link
/// when its last reference goes).
pub fn detach(pin_dir: &Path, iface: &str) -> Result<(), DatapathError> {
    check_pin_dir(pin_dir)?;
    let pins = [xdp_link_pin(pin_dir, iface), tc_link_pin(pin_dir, iface)];
    if !pins.iter().any(|pin| pin.exists()) {
        return Err(DatapathError::NotAttached {
            iface: iface.to_owned(),
            path: pins[0].clone(),
        });
    }
    for pin in pins {
        if let Err(error) = fs::remove_file(&pin)
            && error.kind() != io::ErrorKind::NotFound
        {
            return Err(DatapathError::PinDir {
                path: pin,
                source: error,
            });
        }
    }
    Ok(())
}

/// An XDP program attached to an interface, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachedXdp {
    pub id: u32,
    pub name: String,
    /// `native`, `skb`, `offload`, `multi` (the kernel's `XDP_ATTACHED_*`) or `unknown`.
    pub mode: &'static str,
}

/// The XDP program attached to `iface` in this network namespace, asked of the kernel
/// (`RTM_GETLINK`, `IFLA_XDP`); `None` when there is none or the interface does not exist.
#[must_use]
pub fn attached_xdp(iface: &str) -> Option<AttachedXdp> {
    let name = std::ffi::CString::new(iface).ok()?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    let (attached, id) = netlink::xdp_of(i32::try_from(index).ok().filter(|i| *i != 0)?).ok()??;
    let mode = match attached {
        1 => "native",
        2 => "skb",
        3 => "offload",
        4 => "multi",
        _ => "unknown",
    };
    let name = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|program| program.id() == id)
        .and_then(|program| program.name_as_str().map(str::to_owned))
        .unwrap_or_default();
    Some(AttachedXdp { id, name, mode })
}

/// Just enough rtnetlink to read one interface's `IFLA_XDP` (see `man 7 rtnetlink` and
/// `include/uapi/linux/if_link.h`).
mod netlink {
    use std::{io, mem::size_of};

    use super::size_of_val_u32;

    const IFLA_XDP: u16 = 43;
    const IFLA_XDP_ATTACHED: u16 = 2;
    const IFLA_XDP_PROG_ID: u16 = 4;
    const NLA_TYPE_MASK: u16 = 0x3fff;

    #[repr(C)]
    struct Request {
        header: libc::nlmsghdr,
        info: libc::ifinfomsg,
    }

    /// `(XDP_ATTACHED_* mode, program id)` of interface `index`, `None` when no program.
    pub fn xdp_of(index: i32) -> io::Result<Option<(u8, u32)>> {
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
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: a valid timeval of the size given.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of_val_u32(&timeout),
            );
        }
        // SAFETY: all-zero is a valid nlmsghdr and ifinfomsg.
        let mut request: Request = unsafe { std::mem::zeroed() };
        request.header.nlmsg_len = size_of_val_u32(&request);
        request.header.nlmsg_type = libc::RTM_GETLINK;
        request.header.nlmsg_flags = u16::try_from(libc::NLM_F_REQUEST).unwrap_or(1);
        request.header.nlmsg_seq = 1;
        request.info.ifi_family = u8::try_from(libc::AF_UNSPEC).unwrap_or(0);
        request.info.ifi_index = index;
        // SAFETY: sends the bytes of `request`, whose size is given.
        let sent = unsafe { libc::send(raw, (&raw const request).cast(), size_of::<Request>(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buffer = vec![0u8; 64 << 10];
        // SAFETY: receives into `buffer`, whose length is given.
        let got = unsafe { libc::recv(raw, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
        let got = usize::try_from(got).map_err(|_| io::Error::last_os_error())?;
        parse(&buffer[..got])
    }

    /// The first message of `reply`: an error, or `RTM_NEWLINK` whose attributes follow the
    /// `ifinfomsg`.
    fn parse(reply: &[u8]) -> io::Result<Option<(u8, u32)>> {
        let header = size_of::<libc::nlmsghdr>();
        let invalid = || io::Error::new(io::ErrorKind::InvalidData, "a short netlink reply");
        let len = usize::try_from(u32::from_ne_bytes(
            reply
                .get(..4)
                .ok_or_else(invalid)?
                .try_into()
                .map_err(|_| invalid())?,
        ))
        .map_err(|_| invalid())?;
        let kind = u16::from_ne_bytes(
            reply
                .get(4..6)
                .ok_or_else(invalid)?
                .try_into()
                .map_err(|_| invalid())?,
        );
        let message = reply.get(..len.min(reply.len())).ok_or_else(invalid)?;
        if i32::from(kind) == libc::NLMSG_ERROR {
            let code = i32::from_ne_bytes(
                message
                    .get(header..header + 4)
                    .ok_or_else(invalid)?
                    .try_into()
                    .map_err(|_| invalid())?,
            );
            return Err(io::Error::from_raw_os_error(-code));
        }
        let attrs = message
            .get(header + size_of::<libc::ifinfomsg>()..)
            .ok_or_else(invalid)?;
        let Some(xdp) = attributes(attrs).find(|(kind, _)| *kind == IFLA_XDP) else {
            return Ok(None);
        };
        let (mut attached, mut id) = (0u8, 0u32);
        for (kind, value) in attributes(xdp.1) {
            match kind {
                IFLA_XDP_ATTACHED => attached = value.first().copied().unwrap_or(0),
                IFLA_XDP_PROG_ID => {
                    id = value
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u32::from_ne_bytes);
                }
                _ => {}
            }
        }
        Ok((attached != 0 && id != 0).then_some((attached, id)))
    }

    /// `(type, payload)` of each netlink attribute in `data`, aligned to 4 bytes.
    fn attributes(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
        std::iter::from_fn(move || {
            let len = usize::from(u16::from_ne_bytes(data.get(..2)?.try_into().ok()?));
            let kind = u16::from_ne_bytes(data.get(2..4)?.try_into().ok()?) & NLA_TYPE_MASK;
            if len < 4 || len > data.len() {
                return None;
            }
            let payload = &data[4..len];
            data = data.get(len.next_multiple_of(4)..).unwrap_or(&[]);
            Some((kind, payload))
        })
    }
}

/// `size_of_val` as the `u32`/`socklen_t` the kernel interfaces take.
fn size_of_val_u32<T>(value: &T) -> u32 {
    u32::try_from(size_of_val(value)).unwrap_or(u32::MAX)
}

const _: () = assert!(size_of::<libc::nlmsghdr>() == 16);
