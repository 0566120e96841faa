//! The agent's configuration: built-in defaults, then a TOML file, then command-line flags.
//!
//! Each section is defined and checked by the module that reads it (`[feed]` by
//! [`crate::client`], `[health]` by [`crate::health`], `[[sources]]` entries by
//! [`crate::sources`], ...). This module composes them, names the full key in every error
//! (`health.interval`), and holds the rules between sections and the sections that are
//! the data plane's policy.
//!
//! Unknown keys are errors (a typo must not silently fall back to a default); every error
//! names the file and, from the TOML parser, the line and column.
//!
//! The file says what goes direct and is read again on every SIGHUP, so it is read only when
//! root (or the user running the agent) owns it and nobody else may write to it
//! ([`crate::secure::open_trusted`]); the same holds for every file it names.

use std::{path::PathBuf, time::Duration};

use classifier_common::{DEFAULT_MARK, DEFAULT_MARK_MASK, PIN_DIR, action, category};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    client::FeedConfig,
    dns::{DnsConfig, DomainRule},
    feed::Category,
    gate,
    health::HealthConfig,
    metrics::MetricsConfig,
    pac::{self, PacConfig},
    secure::{self, FileError},
    settings::{Invalid, duration_text, within},
    sources::SourceConfig,
    uplinks::{SteeringConfig, Uplink, UplinkConfig},
};
pub use crate::{feed::CategoryName, settings::Mark};

/// Where `run` and `config check` look when no `--config` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/xdp-breakout/config.toml";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/xdp-breakout";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The file cannot be opened, or another user could change it.
    #[error(transparent)]
    Untrusted(#[from] FileError),
    /// The same of a `path` source's file, for `config check`.
    #[error("sources: source {name:?}")]
    SourceFile {
        name: String,
        #[source]
        source: FileError,
    },
}

impl ConfigError {
    /// `section`'s refusal of one of its keys, with the key named in full (`health.interval`).
    fn in_section(section: &'static str) -> impl Fn(Invalid) -> Self {
        move |Invalid { key, message }| Self::Invalid {
            field: format!("{section}.{key}"),
            message,
        }
    }
}

/// The whole effective configuration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Config {
    /// LAN interfaces to attach to.
    pub interfaces: Vec<String>,
    /// XDP attach mode: auto, native or skb.
    pub mode: XdpModeName,
    /// Directory on bpffs for maps and links.
    pub pin_dir: PathBuf,
    /// Directory for the last applied feed, the client request id and the status.
    pub state_dir: PathBuf,
    /// Detach from the interfaces when the daemon exits (default: leave the data plane).
    pub detach_on_exit: bool,
    pub feed: FeedConfig,
    pub policy: PolicyConfig,
    pub health: HealthConfig,
    /// Several direct uplinks; empty: one, from `[health]` and `policy.mark`.
    pub uplinks: Vec<UplinkConfig>,
    /// Which uplink each category's new flows take, and what quality needs.
    pub steering: SteeringConfig,
    pub flows: FlowsConfig,
    pub index: IndexConfig,
    pub metrics: MetricsConfig,
    pub pac: PacConfig,
    pub dns: DnsConfig,
    /// The operator's own name rules for DNS learning (`[[domains]]`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<DomainRule>,
    /// Other providers' published ranges, and more Microsoft 365 instances, each refreshed on
    /// its own (`[[sources]]`). `[feed]` is the source named `m365`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceConfig>,
}

/// The name `[feed]`'s source goes by.
pub const FEED_SOURCE_NAME: &str = crate::sources::M365;

/// The compiled index beside the tries: a cost per packet that does not grow with the table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct IndexConfig {
    /// Kernel memory for the index, both halves (the live one and the next), in MiB; 0 turns
    /// it off. A table that does not fit is classified by the tries alone, and the agent
    /// says so. Takes effect at start.
    pub memory_mib: u32,
}

/// The default index: 12 MiB a half (the object's `DEFAULT_INDEX_SLOTS`), which holds the
/// union of Microsoft 365, AWS and Azure's published ranges with room to spare.
pub const DEFAULT_INDEX_MIB: u32 = 24;

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            memory_mib: DEFAULT_INDEX_MIB,
        }
    }
}

/// The flow table: connections keep the action of their first packet.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct FlowsConfig {
    /// Entries of the flow table (an LRU map: a full table evicts its least recent flow).
    /// Takes effect at start: a new size starts an empty table.
    pub table_size: u32,
    /// A TCP flow idle this long is classified afresh by its next packet.
    #[serde(with = "duration_text")]
    pub tcp_idle: Duration,
    /// The same for UDP and other protocols.
    #[serde(with = "duration_text")]
    pub other_idle: Duration,
}

impl Default for FlowsConfig {
    fn default() -> Self {
        Self {
            table_size: classifier_common::DEFAULT_FLOWS,
            tcp_idle: Duration::from_secs(u64::from(classifier_common::DEFAULT_TCP_IDLE_S)),
            other_idle: Duration::from_secs(u64::from(classifier_common::DEFAULT_OTHER_IDLE_S)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct PolicyConfig {
    /// Categories that go direct.
    pub direct: Vec<CategoryName>,
    /// Packets whose port matches no rule of their prefix go to the tunnel.
    pub strict_ports: bool,
    /// Mark for direct packets, VALUE/MASK: only the bits in MASK are changed.
    pub mark: Mark,
    /// Extra prefixes that always go direct (as Optimize, by address).
    pub include: Vec<IpNet>,
    /// Prefixes that never go direct, even inside a feed prefix.
    pub exclude: Vec<IpNet>,
    /// Let `include` hold prefixes the feed gate refuses: shorter than the minimum length,
    /// or in special-purpose space (a private data centre reached over the direct uplink).
    pub include_special: bool,
    /// Log every decision through aya-log (one line per packet: for debugging only).
    pub debug_log: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            mode: XdpModeName::Auto,
            pin_dir: PathBuf::from(PIN_DIR),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            detach_on_exit: false,
            feed: FeedConfig::default(),
            policy: PolicyConfig::default(),
            health: HealthConfig::default(),
            uplinks: Vec::new(),
            steering: SteeringConfig::default(),
            flows: FlowsConfig::default(),
            index: IndexConfig::default(),
            metrics: MetricsConfig::default(),
            pac: PacConfig::default(),
            dns: DnsConfig::default(),
            domains: Vec::new(),
            sources: Vec::new(),
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            direct: vec![
                CategoryName(Category::Optimize),
                CategoryName(Category::Allow),
            ],
            strict_ports: false,
            mark: Mark {
                value: DEFAULT_MARK,
                mask: DEFAULT_MARK_MASK,
            },
            include: Vec::new(),
            exclude: Vec::new(),
            include_special: false,
            debug_log: false,
        }
    }
}

impl Config {
    /// Parses a TOML file's text; `path` names it in errors.
    pub fn from_toml(text: &str, path: &std::path::Path) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string().trim_end().replace('\n', " "),
        })?;
        Ok(config)
    }

    /// Reads `path`, or the default file; a missing default file means the defaults. A file
    /// another user could change is refused: `run` then does not start, and a reload keeps
    /// the running configuration.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        match path {
            Some(path) => Self::read(path, true),
            None => Self::read(std::path::Path::new(DEFAULT_CONFIG_PATH), false),
        }
    }

    fn read(path: &std::path::Path, required: bool) -> Result<Self, ConfigError> {
        use std::io::Read as _;
        let mut file = match secure::open_trusted(path, "configuration file") {
            Ok((file, _)) => file,
            Err(FileError::Open { source, .. })
                if !required && source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(Self::default());
            }
            Err(error) => return Err(error.into()),
        };
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
        Self::from_toml(&text, path)
    }

    /// Opens every file the configuration names as the agent will, and refuses one the agent
    /// would not read: what `config check` adds to [`Config::validate`], which reads nothing.
    /// Today that is each `path` source's file (the pin and state directories are checked
    /// where they are opened); `run` meets the same refusal at that source's every fetch.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        for source in &self.sources {
            source
                .check_file()
                .map_err(|error| ConfigError::SourceFile {
                    name: source.name.clone(),
                    source: error,
                })?;
        }
        Ok(())
    }

    /// Checks what the types cannot: every setting that would make the agent fail on every
    /// request, or trust what it should not, is refused with its key's name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, message: String| {
            Err(ConfigError::Invalid {
                field: field.to_owned(),
                message,
            })
        };
        self.feed
            .validate()
            .map_err(ConfigError::in_section("feed"))?;
        self.health
            .validate()
            .map_err(ConfigError::in_section("health"))?;
        self.steering
            .validate()
            .map_err(ConfigError::in_section("steering"))?;
        crate::uplinks::resolve(
            &self.uplinks,
            &self.health,
            self.policy.mark,
            &self.steering,
        )
        .map_err(|Invalid { key, message }| ConfigError::Invalid {
            field: key.to_owned(),
            message,
        })?;
        self.validate_sources()?;
        self.metrics
            .validate()
            .map_err(ConfigError::in_section("metrics"))?;
        self.dns
            .validate()
            .map_err(ConfigError::in_section("dns"))?;
        crate::dns::validate_domains(&self.domains).map_err(|error| ConfigError::Invalid {
            field: "domains".to_owned(),
            message: error.to_string(),
        })?;
        self.pac
            .validate()
            .map_err(ConfigError::in_section("pac"))?;
        if self.pac.serve && (self.metrics.listen.is_empty() || self.pac.proxy.is_empty()) {
            return invalid(
                "pac.serve",
                "needs metrics.listen (where it is served) and pac.proxy (what other \
                 traffic gets)"
                    .to_owned(),
            );
        }
        if !(64..=1 << 24).contains(&self.flows.table_size) {
            return invalid("flows.table-size", "must be 64..=16777216".to_owned());
        }
        if self.index.memory_mib != 0 && !(2..=4096).contains(&self.index.memory_mib) {
            return invalid("index.memory-mib", "must be 0 (off) or 2..=4096".to_owned());
        }
        within(
            "tcp-idle",
            self.flows.tcp_idle,
            Duration::from_secs(1),
            Duration::from_secs(u64::from(u16::MAX)),
        )
        .map_err(ConfigError::in_section("flows"))?;
        within(
            "other-idle",
            self.flows.other_idle,
            Duration::from_secs(1),
            Duration::from_secs(u64::from(u16::MAX)),
        )
        .map_err(ConfigError::in_section("flows"))?;
        for net in self.policy.include.iter().chain(&self.policy.exclude) {
            if net.trunc() != *net {
                return invalid(
                    "policy.include/exclude",
                    format!("{net}: host bits are set (the prefix is {})", net.trunc()),
                );
            }
        }
        if !self.policy.include_special {
            for net in &self.policy.include {
                if let Err(error) = gate::check_prefix(0, *net, self.prefix_limits()) {
                    let reason = error.to_string();
                    let reason = reason
                        .split_once(": ips ")
                        .map_or(&*reason, |(_, rest)| rest);
                    return invalid(
                        "policy.include",
                        format!("{reason}; set policy.include-special = true if it is meant"),
                    );
                }
            }
        }
        Ok(())
    }

    /// The rules between `[[sources]]` entries: each entry checks itself, their names are
    /// unique and none is reserved, and their sets fit in the set ids.
    fn validate_sources(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| {
            Err(ConfigError::Invalid {
                field: "sources".to_owned(),
                message,
            })
        };
        let mut names = vec![FEED_SOURCE_NAME];
        for source in &self.sources {
            let name = &source.name;
            // A taken name is always well-formed (the reserved ones are, and a name is kept
            // only once its entry passed), so this can come before the entry's own checks.
            if names.contains(&name.as_str()) || name == "operator" {
                return invalid(format!(
                    "name {name:?} is taken ({FEED_SOURCE_NAME} is [feed], operator is \
                     policy.include)"
                ));
            }
            names.push(name);
            if let Err(error) = source.validate() {
                return invalid(error.to_string());
            }
        }
        crate::sources::first_set_ids(&self.all_sources()).map_or_else(invalid, |_| Ok(()))
    }

    /// Every source: `[feed]` as the `m365` source first, then `[[sources]]` in order.
    #[must_use]
    pub fn all_sources(&self) -> Vec<SourceConfig> {
        std::iter::once(self.feed.source())
            .chain(self.sources.iter().cloned())
            .collect()
    }

    /// The direct uplinks: `[[uplinks]]`, or the one of `[health]` and `policy.mark`. Falls
    /// back to that one for a configuration [`Config::validate`] refuses.
    #[must_use]
    pub fn uplinks(&self) -> Vec<Uplink> {
        crate::uplinks::resolve(
            &self.uplinks,
            &self.health,
            self.policy.mark,
            &self.steering,
        )
        .unwrap_or_else(|_| {
            crate::uplinks::resolve(&[], &self.health, self.policy.mark, &self.steering)
                .unwrap_or_default()
        })
    }

    /// What the feed gate demands of every prefix.
    #[must_use]
    pub fn prefix_limits(&self) -> gate::PrefixLimits {
        gate::PrefixLimits {
            min_len_v4: self.feed.min_prefix_len_v4,
            min_len_v6: self.feed.min_prefix_len_v6,
        }
    }

    /// Warnings about settings that are allowed but weaken a guarantee.
    #[must_use]
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        warnings.extend(self.feed.warning());
        if self.uplinks.is_empty() {
            warnings.extend(self.health.warning());
        } else if self.health.failover != crate::health::Failover::None {
            for uplink in self
                .uplinks
                .iter()
                .filter(|uplink| uplink.targets.is_empty())
            {
                warnings.push(format!(
                    "uplinks: {:?} has no targets: it probes the Optimize front doors of the \
                     installed feed",
                    uplink.name
                ));
            }
        }
        warnings.extend(self.metrics.warning());
        warnings.extend(self.dns.warning());
        if self.policy.include_special && !self.policy.include.is_empty() {
            warnings.push(
                "policy.include-special: include prefixes skip the feed gate's checks".to_owned(),
            );
        }
        warnings
    }

    /// The kernel policy: the action of each category code.
    #[must_use]
    pub fn actions(&self) -> [u8; category::COUNT as usize] {
        let mut actions = [action::TUNNEL; category::COUNT as usize];
        actions[usize::from(category::DIRECT)] = action::DIRECT;
        for CategoryName(category) in &self.policy.direct {
            actions[usize::from(category.code())] = action::DIRECT;
        }
        actions
    }

    /// The kernel config map's value.
    #[must_use]
    pub fn kernel_config(&self) -> classifier_common::Config {
        let mut flags = 0;
        if self.policy.strict_ports {
            flags |= classifier_common::flags::STRICT_PORTS;
        }
        if self.policy.debug_log {
            flags |= classifier_common::flags::DEBUG;
        }
        if self.dns.learn {
            flags |= classifier_common::flags::DNS_QUERIES;
        }
        let seconds = |d: Duration| u16::try_from(d.as_secs()).unwrap_or(u16::MAX);
        classifier_common::Config {
            mark: self.policy.mark.value,
            mark_mask: self.policy.mark.mask,
            flags,
            tcp_idle_s: seconds(self.flows.tcp_idle),
            other_idle_s: seconds(self.flows.other_idle),
        }
    }
}

/// The settings the PAC file is made from, so that `pac` needs no [`Config`].
impl<'a> From<&'a Config> for pac::Inputs<'a> {
    fn from(config: &'a Config) -> Self {
        Self {
            pac: &config.pac,
            direct: config.policy.direct.iter().map(|name| name.0).collect(),
        }
    }
}

/// The settings that take effect only when the agent starts: what it attached to and where
/// its pins and state live. A reload keeps the running ones (and says so when the file
/// changed them); the exit path detaches what was attached, not what the file says now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartOnly {
    pub interfaces: Vec<String>,
    pub mode: XdpModeName,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    /// `flows.table-size`: the map's size is set when it is created.
    pub flow_table_size: u32,
    /// `index.memory-mib`: the same.
    pub index_memory_mib: u32,
    /// `metrics.listen`: the socket is bound at start.
    pub metrics_listen: String,
    /// `dns.learn`: the capture program is attached at start.
    pub dns_learn: bool,
}

impl RestartOnly {
    /// The keys whose values differ between `self` and `other`.
    #[must_use]
    pub fn changed(&self, other: &Self) -> Vec<&'static str> {
        let Self {
            interfaces,
            mode,
            pin_dir,
            state_dir,
            flow_table_size,
            index_memory_mib,
            metrics_listen,
            dns_learn,
        } = self;
        [
            ("interfaces", *interfaces != other.interfaces),
            ("mode", *mode != other.mode),
            ("pin-dir", *pin_dir != other.pin_dir),
            ("state-dir", *state_dir != other.state_dir),
            (
                "flows.table-size",
                *flow_table_size != other.flow_table_size,
            ),
            (
                "index.memory-mib",
                *index_memory_mib != other.index_memory_mib,
            ),
            ("metrics.listen", *metrics_listen != other.metrics_listen),
            ("dns.learn", *dns_learn != other.dns_learn),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

impl Config {
    /// The restart-only part.
    #[must_use]
    pub fn restart_only(&self) -> RestartOnly {
        RestartOnly {
            interfaces: self.interfaces.clone(),
            mode: self.mode,
            pin_dir: self.pin_dir.clone(),
            state_dir: self.state_dir.clone(),
            flow_table_size: self.flows.table_size,
            index_memory_mib: self.index.memory_mib,
            metrics_listen: self.metrics.listen.clone(),
            dns_learn: self.dns.learn,
        }
    }

    /// The sizes of the maps sized at load.
    #[must_use]
    pub fn map_sizes(&self) -> crate::datapath::MapSizes {
        crate::datapath::MapSizes {
            flows: Some(self.flows.table_size),
            index_slots: Some(crate::datapath::MapSizes::index_slots(
                self.index.memory_mib,
            )),
        }
    }

    /// This configuration with `running`'s restart-only settings: what a reload can take.
    /// Returns the restart-only keys the new configuration would have changed.
    #[must_use]
    pub fn reloadable_over(mut self, running: &RestartOnly) -> (Self, Vec<&'static str>) {
        let ignored = self.restart_only().changed(running);
        let RestartOnly {
            interfaces,
            mode,
            pin_dir,
            state_dir,
            flow_table_size,
            index_memory_mib,
            metrics_listen,
            dns_learn,
        } = running.clone();
        (self.interfaces, self.mode, self.pin_dir, self.state_dir) =
            (interfaces, mode, pin_dir, state_dir);
        self.flows.table_size = flow_table_size;
        self.index.memory_mib = index_memory_mib;
        self.metrics.listen = metrics_listen;
        self.dns.learn = dns_learn;
        (self, ignored)
    }
}

/// Attach mode, as written in the file and on the command line: XDP in one of its modes
/// (with tc ingress marking), or tc ingress alone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum XdpModeName {
    /// Native if the driver supports it, else generic.
    #[default]
    Auto,
    /// In the driver (fastest; fails on drivers without XDP support).
    Native,
    /// Generic XDP in the network stack (works on any interface).
    Skb,
    /// No XDP: tc ingress alone classifies and marks (bridges, VLAN devices, NICs where XDP
    /// would be generic).
    Tc,
}

impl From<XdpModeName> for crate::datapath::AttachMode {
    fn from(mode: XdpModeName) -> Self {
        use aya::programs::XdpMode;
        match mode {
            XdpModeName::Auto => Self::Xdp(XdpMode::Default),
            XdpModeName::Native => Self::Xdp(XdpMode::Driver),
            XdpModeName::Skb => Self::Xdp(XdpMode::Skb),
            XdpModeName::Tc => Self::Tc,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        settings::{format_duration, parse_duration},
        sources::Kind,
    };

    /// The file is read through the rule of `secure::open_trusted`, and so is every file it
    /// names, for `config check`; a missing default file is still the defaults.
    #[test]
    fn files_another_user_could_change_are_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("xb-config-owner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("config.toml");
        let chmod = |path: &Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        std::fs::write(&file, "[policy]\ninclude = [\"77.0.0.0/8\"]\n").unwrap();
        chmod(&file, 0o644);
        let config = Config::load(Some(&file)).unwrap();
        assert_eq!(
            config.policy.include,
            ["77.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        for (mode, shown) in [(0o666, "0666"), (0o620, "0620")] {
            chmod(&file, mode);
            let error = Config::load(Some(&file)).unwrap_err().to_string();
            for part in [
                &format!("configuration file {} is owned by uid", file.display()),
                &format!("with mode {shown}: other users may write to it"),
                &format!("; `chmod go-w {}`", file.display()),
            ] {
                assert!(error.contains(part), "{error:?} lacks {part:?}");
            }
        }
        chmod(&file, 0o644);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&file, Some(65534), None).unwrap();
            let error = Config::load(Some(&file)).unwrap_err().to_string();
            assert!(error.contains("is owned by uid 65534"), "{error}");
            assert!(error.contains("`chown root:root"), "{error}");
        } else {
            eprintln!("skipped another user's file: chown needs root (secure.rs checks the rule)");
        }

        let missing = dir.join("missing.toml");
        let error = Config::load(Some(&missing)).unwrap_err().to_string();
        assert_eq!(error, format!("reading {}", missing.display()));
        assert_eq!(Config::read(&missing, false).unwrap(), Config::default());

        let list = dir.join("zoom.txt");
        std::fs::write(&list, "203.0.113.0/24\n").unwrap();
        chmod(&list, 0o644);
        let config = Config::from_toml(
            &format!(
                "[[sources]]\nname = \"zoom\"\nkind = \"cidr-list\"\npath = \"{}\"\n",
                list.display()
            ),
            Path::new("c.toml"),
        )
        .unwrap();
        config.check_files().unwrap();
        chmod(&list, 0o646);
        let error = anyhow::Error::from(config.check_files().unwrap_err());
        let error = format!("{error:#}");
        assert!(
            error.starts_with("sources: source \"zoom\": source file"),
            "{error}"
        );
        assert!(
            error.contains("with mode 0646: other users may write"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn defaults_round_trip_through_toml() {
        let text = toml::to_string_pretty(&Config::default()).unwrap();
        assert_eq!(
            Config::from_toml(&text, Path::new("x")).unwrap(),
            Config::default()
        );
        assert!(text.contains("poll-interval = \"1h\""), "{text}");
        assert!(text.contains("mark = \"0x365/0xffff\""), "{text}");
    }

    #[test]
    fn a_file_overrides_defaults_and_keeps_the_rest() {
        let config = Config::from_toml(
            "interfaces = [\"lan0\"]\n[feed]\npoll-interval = \"30s\"\n[policy]\ndirect = [\"Optimize\"]\nexclude = [\"52.112.0.0/16\"]\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(config.interfaces, ["lan0"]);
        assert_eq!(config.feed.poll_interval, Duration::from_secs(30));
        assert_eq!(config.feed.instance, "Worldwide");
        assert_eq!(
            config.actions(),
            [
                action::TUNNEL,
                action::TUNNEL,
                action::TUNNEL,
                action::DIRECT,
                action::TUNNEL,
                action::DIRECT,
                action::TUNNEL,
                action::TUNNEL,
            ]
        );
        config.validate().unwrap();
    }

    #[test]
    fn errors_say_what_and_where() {
        let error = Config::from_toml(
            "[feed]\npoll-intervall = \"1h\"\n",
            Path::new("/etc/x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("/etc/x.toml: "), "{error}");
        assert!(error.contains("poll-intervall"), "{error}");
        assert!(error.contains("line 2"), "{error}");
        let error = Config::from_toml("[policy]\nmark = \"0x1365/0xfff\"\n", Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("outside mask"), "{error}");
        let error = Config::from_toml("[policy]\ndirect = [\"Fast\"]\n", Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown category"), "{error}");
        let config = Config::from_toml("[feed]\ninstance = \"Mars\"\n", Path::new("c")).unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("feed.instance")
        );
        let config =
            Config::from_toml("[policy]\ninclude = [\"10.0.0.1/8\"]\n", Path::new("c")).unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("host bits")
        );
    }

    /// Settings that make every request fail, or trust what should not be trusted, are
    /// refused with the key's name; `http://` needs an explicit opt-in and then warns.
    #[test]
    fn settings_that_cannot_work_or_weaken_trust_are_refused_by_name() {
        let cases = [
            (
                "[feed]\nconnect-timeout = \"0s\"\n",
                "feed.connect-timeout: 0s is outside",
            ),
            (
                "[feed]\nrequest-timeout = \"0ms\"\n",
                "feed.request-timeout: 0s is outside",
            ),
            (
                "[feed]\nrequest-timeout = \"2d\"\n",
                "feed.request-timeout: 2d is outside",
            ),
            (
                "[feed]\nmax-body-bytes = 0\n",
                "feed.max-body-bytes: 0 is outside",
            ),
            (
                "[feed]\npoll-interval = \"30d\"\n",
                "feed.poll-interval: 30d is outside",
            ),
            (
                "[feed]\nmin-prefix-len-v4 = 0\n",
                "feed.min-prefix-len-v4: must be 1..=32",
            ),
            (
                "[feed]\nmin-prefix-len-v6 = 129\n",
                "feed.min-prefix-len-v6: must be 1..=128",
            ),
            (
                "[feed]\nurl = \"http://mirror.example\"\n",
                "feed.url: \"http://mirror.example\" is plain HTTP",
            ),
            (
                "[feed]\nurl = \"ftp://mirror.example\"\n",
                "is not an https:// URL",
            ),
            (
                "[policy]\ninclude = [\"10.1.0.0/16\"]\n",
                "policy.include: \"10.1.0.0/16\": overlaps 10.0.0.0/8, private-use",
            ),
            (
                "[policy]\ninclude = [\"0.0.0.0/0\"]\n",
                "policy.include: \"0.0.0.0/0\": shorter than /8",
            ),
        ];
        for (text, expected) in cases {
            let config = Config::from_toml(text, Path::new("c")).unwrap();
            let error = config.validate().unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{text:?}: {error:?} lacks {expected:?}"
            );
        }
        let config = Config::from_toml(
            "[feed]\nurl = \"http://127.0.0.1:8080\"\nallow-http = true\n[policy]\ninclude = [\"10.1.0.0/16\"]\ninclude-special = true\n[dns]\nresolvers = [\"10.0.1.1\"]\n",
            Path::new("c"),
        )
        .unwrap();
        config.validate().unwrap();
        let warnings = config.warnings();
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("plain HTTP"), "{warnings:?}");
        assert!(
            warnings[1].contains("probes the Optimize front doors"),
            "{warnings:?}"
        );
        // The defaults warn of the probes nobody chose, and of learning with no resolver in
        // reach on a host where nothing listens on port 53.
        let defaults = Config::default().warnings();
        assert!(
            defaults
                .iter()
                .any(|w| w.contains("probes the Optimize front doors")),
            "{defaults:?}"
        );
        assert!(
            defaults.len() == 1 || defaults.iter().any(|w| w.starts_with("dns.learn")),
            "{defaults:?}"
        );
        let mut dns = DnsConfig {
            resolvers: vec!["10.0.1.1".parse().unwrap()],
            ..DnsConfig::default()
        };
        assert_eq!(dns.warning(), None, "resolvers named");
        dns.resolvers.clear();
        dns.learn = false;
        assert_eq!(dns.warning(), None, "not learning");
        assert_eq!(
            parse_duration("18446744073709551615h"),
            Err("\"18446744073709551615h\" is too long a duration".to_owned())
        );
    }

    #[test]
    fn a_reload_keeps_the_restart_only_settings_and_names_them() {
        let running = Config::from_toml("interfaces = [\"lan1\"]\n", Path::new("c")).unwrap();
        let new = Config::from_toml(
            "interfaces = [\"lo\"]\npin-dir = \"/sys/fs/bpf/other\"\n[policy]\nstrict-ports = true\n",
            Path::new("c"),
        )
        .unwrap();
        let (reloaded, ignored) = new.reloadable_over(&running.restart_only());
        assert_eq!(ignored, ["interfaces", "pin-dir"]);
        assert_eq!(reloaded.restart_only(), running.restart_only());
        assert!(reloaded.policy.strict_ports, "the reloadable part is taken");
    }

    /// The README's configuration block is the defaults.
    #[test]
    fn readme_config_block_is_the_defaults() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("### Configuration").expect("section")..];
        let block = section
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("toml block");
        assert_eq!(
            Config::from_toml(block, Path::new("README.md")).unwrap(),
            Config::default()
        );
    }

    /// The README's Sources block is a valid configuration with one source of each kind,
    /// and what it says round-trips through `config check`'s TOML.
    #[test]
    fn readme_sources_block_is_valid() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## Sources").expect("section")..];
        let block = section
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("toml block");
        let config = Config::from_toml(block, Path::new("README.md")).unwrap();
        config.validate().unwrap();
        let kinds: std::collections::BTreeSet<Kind> =
            config.sources.iter().map(|source| source.kind).collect();
        assert_eq!(kinds.len(), Kind::ALL.len(), "one example of each kind");
        let text = toml::to_string_pretty(&config).unwrap();
        assert_eq!(Config::from_toml(&text, Path::new("x")).unwrap(), config);
    }

    /// The configuration the package installs is valid and changes no default.
    #[test]
    fn the_packaged_configuration_is_the_defaults() {
        let config =
            Config::from_toml(include_str!("../../dist/config.toml"), Path::new("dist")).unwrap();
        config.validate().unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn metrics_and_pac_settings_are_checked() {
        let check = |text: &str| {
            Config::from_toml(text, Path::new("c.toml"))
                .and_then(|config| config.validate())
                .err()
                .map(|error| error.to_string())
                .unwrap_or_default()
        };
        assert!(check("[metrics]\nlisten = \"localhost:9365\"\n").contains("is not HOST:PORT"));
        assert!(check("[metrics]\nlisten = \"\"\n").is_empty(), "empty: off");
        assert!(check("[pac]\nserve = true\n").contains("needs metrics.listen"));
        assert!(check("[pac]\nproxy = \"PROXY a\"\n").contains("is not host:port"));
        assert!(check("[pac]\ntype = 3\n").contains("3 is not 1 or 2"));
        let config = Config::from_toml(
            "[metrics]\nlisten = \"0.0.0.0:9365\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert!(
            config
                .warnings()
                .iter()
                .any(|w| w.contains("is not loopback")),
            "{:?}",
            config.warnings()
        );
    }

    #[test]
    fn bad_sources_are_refused_with_their_name_and_key() {
        let check = |text: &str| {
            Config::from_toml(text, Path::new("c.toml"))
                .and_then(|config| config.validate())
                .err()
                .map(|error| error.to_string())
                .unwrap_or_default()
        };
        let list = "[[sources]]\nname = \"zoom\"\nkind = \"cidr-list\"\n";
        for (extra, needle) in [
            ("", "source \"zoom\": give url or path"),
            ("url = \"http://x/z\"\n", "is plain HTTP"),
            ("url = \"ftp://x/z\"\n", "is not an https:// URL"),
            ("path = \"z.txt\"\n", "is not absolute"),
            ("path = \"/z\"\nurl = \"https://x\"\n", "not both"),
            (
                "path = \"/z\"\nudp = \"3478-3470\"\n",
                "udp: range \"3478-3470\" runs backwards",
            ),
            (
                "path = \"/z\"\ntags = [\"x\"]\n",
                "a cidr-list source has no tags filter",
            ),
            ("path = \"/z\"\nrefresh = \"0s\"\n", "refresh 0s is outside"),
            ("path = \"/z\"\npolicy = \"sideways\"\n", "unknown variant"),
        ] {
            let error = check(&format!("{list}{extra}"));
            assert!(error.contains(needle), "{extra:?}: {error}");
        }
        let error = check("[[sources]]\nname = \"m365\"\nkind = \"aws\"\nurl = \"https://x\"\n");
        assert!(error.contains("name \"m365\" is taken"), "{error}");
        let error = check("[[sources]]\nname = \"Zoom!\"\nkind = \"aws\"\nurl = \"https://x\"\n");
        assert!(error.contains("name \"Zoom!\": 1 to 32 of"), "{error}");
        let error = check("[[sources]]\nname = \"x\"\nkind = \"zoom\"\n");
        assert!(error.contains("unknown source kind \"zoom\""), "{error}");
        let error = check("[[sources]]\nname = \"g\"\nkind = \"m365\"\npolicy = \"direct\"\n");
        assert!(error.contains("goes by category"), "{error}");
    }

    #[test]
    fn durations_and_marks_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_mins(5)));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(format_duration(Duration::from_hours(2)), "2h");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(
            "0x365/0xffff".parse(),
            Ok(Mark {
                value: 0x365,
                mask: 0xffff
            })
        );
        assert_eq!(
            "869/65535".parse(),
            Ok(Mark {
                value: 0x365,
                mask: 0xffff
            })
        );
        assert_eq!(
            "0x10".parse(),
            Ok(Mark {
                value: 0x10,
                mask: u32::MAX
            })
        );
        assert!("0x365/0".parse::<Mark>().unwrap_err().contains("mask is 0"));
        assert!(
            "lots"
                .parse::<Mark>()
                .unwrap_err()
                .contains("not a 32-bit number")
        );
    }
}
