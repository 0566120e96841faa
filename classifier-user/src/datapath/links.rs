//! Attaching and detaching: the XDP and tc ingress links of each interface, pinned so that
//! they outlive the process, and what the kernel says is attached to an interface.

use std::{fs, io, path::Path};

use aya::{
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{self, SchedClassifierLink, SchedClassifierLinkId},
        xdp::{XdpLink, XdpLinkId},
    },
    sys::SyscallError,
};

use super::{
    Datapath, DatapathError,
    pins::{check_pin_dir, tc_link_pin, xdp_link_pin},
};
use crate::privilege::{Denied, denied_or, pin_denied_to_user};

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
        // A pin this user may not open is root's, not a stale one to remove.
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if pin_denied_to_user(&io_error) =>
        {
            return Err(Denied {
                doing: "opening the pinned link".to_owned(),
                path: pin.to_owned(),
                source: io_error,
            }
            .into());
        }
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

/// How the classifier attaches to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// XDP in this mode classifies, and tc ingress (`breakout_mark`) marks.
    Xdp(XdpMode),
    /// tc ingress alone (`breakout_tc`) classifies and marks: bridges, VLAN devices and NICs
    /// where XDP would run only in generic mode (slow, and blind to cloned skbs).
    Tc,
}

impl Datapath {
    /// Attaches `mode`'s programs to `iface` and pins their links, or, when this pin
    /// directory already has links for it, swaps the loaded programs into them without a
    /// gap. A change of mode swaps the tc program in its link and then adds or removes the
    /// XDP link: `breakout_tc` takes a packet that still carries XDP metadata as
    /// `breakout_mark` does, so no packet is classified twice or missed.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<(), DatapathError> {
        let pin_dir = self.pin_dir.clone().ok_or(DatapathError::Unpinned)?;
        let xdp_pin = xdp_link_pin(&pin_dir, iface);
        let tc_pin = tc_link_pin(&pin_dir, iface);
        let attach_tc = |datapath: &mut Self, alone: bool| {
            adopt_or_attach(
                datapath.tc(alone)?,
                iface,
                &tc_pin,
                |classifier| {
                    // tcx (6.6+) needs no qdisc; older kernels need clsact. Adding it is
                    // harmless.
                    if let Err(error) = tc::qdisc_add_clsact(iface) {
                        log::debug!("{iface}: clsact qdisc: {error}");
                    }
                    classifier.attach(iface, TcAttachType::Ingress)
                },
                "attaching the tc ingress program",
            )
        };
        let xdp_mode = match mode {
            AttachMode::Xdp(xdp_mode) => xdp_mode,
            AttachMode::Tc => {
                attach_tc(self, true)?;
                return match fs::remove_file(&xdp_pin) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => {
                        Err(DatapathError::PinDir {
                            path: xdp_pin,
                            source: error,
                        })
                    }
                    _ => Ok(()),
                };
            }
        };
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
            |xdp| xdp.attach(iface, xdp_mode),
            &xdp_attach_hint(xdp_mode),
        )?;
        attach_tc(self, false)
    }
}

impl Datapath {
    /// Attaches the DNS capture program to `iface`'s tc egress (`learn`), swapping it into
    /// the pinned link when there is one; or removes that link (not `learn`).
    pub fn attach_dns(&mut self, iface: &str, learn: bool) -> Result<(), DatapathError> {
        let pin_dir = self.pin_dir.clone().ok_or(DatapathError::Unpinned)?;
        let pin = super::pins::tc_egress_link_pin(&pin_dir, iface);
        if !learn {
            return match fs::remove_file(&pin) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    Err(DatapathError::PinDir {
                        path: pin,
                        source: error,
                    })
                }
                _ => Ok(()),
            };
        }
        adopt_or_attach(
            self.dns()?,
            iface,
            &pin,
            |classifier| {
                if let Err(error) = tc::qdisc_add_clsact(iface) {
                    log::debug!("{iface}: clsact qdisc: {error}");
                }
                classifier.attach(iface, TcAttachType::Egress)
            },
            "attaching the DNS capture program to tc egress",
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
    let pins = [
        xdp_link_pin(pin_dir, iface),
        tc_link_pin(pin_dir, iface),
        super::pins::tc_egress_link_pin(pin_dir, iface),
    ];
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
            return Err(denied_or(error, "removing the link pin", &pin, |source| {
                DatapathError::PinDir {
                    path: pin.clone(),
                    source,
                }
            }));
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
    let (attached, id) = crate::netlink::link(crate::netlink::index(iface)?)
        .ok()?
        .xdp?;
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
