//! Throwaway network namespaces, deleted on drop (also when a test panics).

use std::{
    fs::File,
    io,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

/// A network namespace named `<prefix>-<pid>-<n>`, unique on the machine.
pub struct Netns {
    pub name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn new(prefix: &str) -> io::Result<Self> {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// A namespace with a veth pair `lan0` <-> `lan1`, both up, and IPv6 off so that no
    /// neighbour discovery adds packets to the counters; `None` (skip) when namespaces are
    /// unavailable outside CI.
    ///
    /// # Panics
    ///
    /// When namespaces are unavailable under `CI=true`, or the pair cannot be made.
    #[must_use]
    pub fn with_veth_pair(prefix: &str) -> Option<Self> {
        let netns = match Self::new(prefix) {
            Ok(netns) => netns,
            Err(error) => {
                crate::unavailable("a network namespace", &error)?;
                unreachable!()
            }
        };
        for setting in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ] {
            netns.sysctl(setting).expect("sysctl");
        }
        netns
            .ip(&[
                "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
            ])
            .expect("veth pair");
        netns.ip(&["link", "set", "lan0", "up"]).expect("lan0 up");
        netns.ip(&["link", "set", "lan1", "up"]).expect("lan1 up");
        Some(netns)
    }

    /// `/run/netns/<name>`, for `nsenter --net=`.
    #[must_use]
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip -n <name> ARGS`, failing on a non-zero exit.
    pub fn ip(&self, args: &[&str]) -> io::Result<Output> {
        run_checked(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// A command that runs inside the namespace's network stack only (`nsenter --net`), so it
    /// still sees the host's `/sys/fs/bpf` (which `ip netns exec` would hide).
    #[must_use]
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        command
    }

    /// Writes a sysctl of the namespace. `/proc/sys/net` shows the reader's namespace, so
    /// this runs `sysctl` inside it (`ip netns exec`: sysctl needs no bpffs).
    pub fn sysctl(&self, setting: &str) -> io::Result<()> {
        run_checked(
            Command::new("ip").args(["netns", "exec", &self.name, "sysctl", "-qw", setting]),
        )
        .map(drop)
    }

    /// Runs `f` on a thread that has entered the namespace (setns changes only that thread),
    /// so that interface names, sockets and XDP attachments resolve inside it.
    ///
    /// # Panics
    ///
    /// When the namespace cannot be entered, or `f` panics.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        thread::scope(|scope| {
            scope
                .spawn(move || {
                    enter(&path);
                    f()
                })
                .join()
                .expect("netns thread")
        })
    }

    /// Runs `f` on a detached thread that has entered the namespace, for work that goes on
    /// while the caller does other things (a stream of packets).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> thread::JoinHandle<T> {
        let path = self.path();
        thread::spawn(move || {
            enter(&path);
            f()
        })
    }
}

/// Moves the calling thread into the network namespace at `path` (setns changes only the
/// calling thread).
///
/// # Panics
///
/// When the namespace cannot be entered.
fn enter(path: &str) {
    let file = File::open(path).expect("open netns");
    // SAFETY: setns on a namespace fd we hold; it changes only this thread.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command and turns a non-zero exit into an error carrying its stderr.
pub fn run_checked(command: &mut Command) -> io::Result<Output> {
    let output = command.output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "{command:?}: {}{}",
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        )));
    }
    Ok(output)
}

/// Sends raw Ethernet frames out of `ifindex` (`AF_PACKET`); call inside the namespace.
///
/// # Panics
///
/// Never for real sizes (the conversions are of small constants).
pub fn send_frames(ifindex: u32, frames: &[Vec<u8>]) -> io::Result<()> {
    // SAFETY: plain socket syscalls on a fd we own; the address struct is zeroed and filled.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = u16::try_from(libc::AF_PACKET).expect("small");
        addr.sll_ifindex = i32::try_from(ifindex).expect("ifindex");
        addr.sll_halen = 6;
        for frame in frames {
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                u32::try_from(size_of::<libc::sockaddr_ll>()).expect("small"),
            );
            if sent < 0 {
                let error = io::Error::last_os_error();
                libc::close(fd);
                return Err(error);
            }
        }
        libc::close(fd);
    }
    Ok(())
}

/// The index of `name` in the calling thread's namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c_name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: NUL-terminated name.
    match unsafe { libc::if_nametoindex(c_name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        index => Ok(index),
    }
}
