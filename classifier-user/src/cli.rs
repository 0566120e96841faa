//! Command-line arguments of `xdp-breakout`.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use classifier_common::PIN_DIR;

use crate::{
    config::{CategoryName, Config, DEFAULT_STATE_DIR, Mark, XdpModeName},
    health::{Failover, Require, Target},
    settings::parse_duration,
};

/// Split-tunnel classifier: sends Microsoft 365 traffic out of the direct uplink.
///
/// An XDP program on the LAN interface matches each packet's destination against the
/// Microsoft 365 endpoint feed; a tc program marks the packets that go direct, and policy
/// routing (`ip rule fwmark`) sends them out of the direct uplink. Everything else follows
/// the normal route (the tunnel). No packet is ever dropped.
#[derive(Debug, Parser)]
#[command(name = "xdp-breakout", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Directory on bpffs that holds the maps and links [default: /sys/fs/bpf/xdp-breakout].
    #[arg(long, global = true, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// The agent's state directory (last applied feed, status) [default: /var/lib/xdp-breakout].
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl GlobalArgs {
    /// The pin directory: the flag, else the default.
    #[must_use]
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(PIN_DIR))
    }

    /// The state directory: the flag, else the default.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: attach, keep the maps equal to Microsoft's feed, forward kernel logs.
    Run(RunArgs),
    /// Load the programs and attach them to LAN interfaces (or update them in place).
    Attach(AttachArgs),
    /// Detach the programs from interfaces.
    Detach(DetachArgs),
    /// Show attachments, feed version, prefix counts, polls and errors.
    Status(StatusArgs),
    /// Show the counters: per outcome, per category and per endpoint set.
    Stats(StatsArgs),
    /// Ask the live maps what the data plane decides for addresses, and why.
    Lookup(LookupArgs),
    /// Run every packet of a capture through the XDP program (BPF_PROG_TEST_RUN).
    Classify(ClassifyArgs),
    /// List the installed prefixes with their category and endpoint sets.
    Prefixes(PrefixesArgs),
    /// List the flow table: connections and the uplink each keeps.
    Flows(FlowsArgs),
    /// List the sources of prefixes: kind, version, prefixes, last success and last error.
    Sources(SourcesArgs),
    /// Print a PAC file that sends the feed's direct categories' hosts direct.
    Pac(PacArgs),
    /// Print the local resolver's forward zones: direct names to [dns] local-resolvers.
    DnsConfig(DnsConfigArgs),
    /// Print the direct uplinks' egress addresses, for Entra ID named locations.
    Egress(EgressArgs),
    /// List the addresses learned from DNS answers: address, name, set, category, expiry.
    Learned(LearnedArgs),
    /// Refresh the pinned maps once, with the agent's validation.
    Sync(SyncArgs),
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Print the man page (roff).
    Man,
}

#[derive(Debug, Args)]
pub struct StatusArgs {}

#[derive(Debug, Args)]
pub struct LookupArgs {
    /// Addresses to look up, or `-` to read lines `ADDRESS [tcp|udp PORT]` from stdin.
    #[arg(required = true, value_name = "ADDRESS")]
    pub addresses: Vec<String>,
    /// Protocol of the packet (with --port); without it, a packet without ports.
    #[arg(long, value_enum, requires = "port")]
    pub proto: Option<Proto>,
    /// Destination port (with --proto).
    #[arg(long, requires = "proto")]
    pub port: Option<u16>,
}

/// Transport protocols with ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// A libpcap capture of Ethernet frames (as `tcpdump -w` writes).
    #[arg(long, value_name = "FILE")]
    pub pcap: PathBuf,
}

#[derive(Debug, Args)]
pub struct PrefixesArgs {
    /// Only the prefixes whose rules or category name a set of this source (`m365` is
    /// `[feed]`, `operator` is policy.include).
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
}

#[derive(Debug, Args)]
pub struct SourcesArgs {}

#[derive(Debug, Args)]
pub struct LearnedArgs {}

#[derive(Debug, Args)]
pub struct PacArgs {
    /// Microsoft's PAC type: 1 sends Optimize direct, 2 Optimize and Allow [default: the
    /// categories policy.direct names, or [pac] type].
    #[arg(long = "type", value_parser = clap::value_parser!(u8).range(1..=2))]
    pub r#type: Option<u8>,
    /// What other traffic gets: "PROXY host:port" [default: [pac] proxy].
    #[arg(long)]
    pub proxy: Option<String>,
    /// Make it from this endpoints feed instead of the installed one.
    #[arg(long, value_name = "FILE")]
    pub feed_file: Option<PathBuf>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Args)]
pub struct DnsConfigArgs {
    /// The resolver that reads the file [default: [dns] local-format].
    #[arg(long, value_enum)]
    pub format: Option<crate::dns::LocalFormat>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Args)]
pub struct FlowsArgs {}

#[derive(Debug, Args)]
pub struct EgressArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Install this endpoints feed (JSON of `GET /endpoints/{instance}`) instead of fetching.
    #[arg(long, value_name = "FILE", conflicts_with = "feed_url")]
    pub feed_file: Option<PathBuf>,
    /// Print what would change and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply even a feed that shrinks beyond the limit, or the same version again.
    #[arg(long)]
    pub force: bool,
    /// Refresh this `[[sources]]` entry instead of `[feed]` (`m365`); the others stay as
    /// they are.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["feed_file", "dry_run"])]
    pub source: Option<String>,
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print the effective one (defaults, file, flags).
    Check(ConfigArgs),
}

/// The configuration file and a flag for each of its settings; flags win.
#[derive(Debug, Default, Args)]
#[expect(clippy::struct_excessive_bools, reason = "command-line switches")]
pub struct ConfigArgs {
    /// TOML configuration file, root's and writable by no one else [default:
    /// /etc/xdp-breakout/config.toml, if present].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// LAN interface to attach to (repeat for several).
    #[arg(long = "iface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum)]
    pub mode: Option<XdpModeName>,
    /// Base URL of the endpoint web service.
    #[arg(long, value_name = "URL")]
    pub feed_url: Option<String>,
    /// Worldwide, China, USGovDoD or USGovGCCHigh.
    #[arg(long)]
    pub instance: Option<String>,
    /// Only these service areas (repeat): Exchange, SharePoint, Skype, Common.
    #[arg(long = "service-area", value_name = "AREA")]
    pub service_areas: Vec<String>,
    /// Leave IPv6 prefixes out.
    #[arg(long)]
    pub no_ipv6: bool,
    /// How often to check the feed version (30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub poll_interval: Option<Duration>,
    /// Accept a plain http:// feed URL (a test server or a mirror on a trusted network).
    #[arg(long)]
    pub allow_http: bool,
    /// Adds tenant-specific URLs to the feed (no effect on addresses).
    #[arg(long, value_name = "NAME")]
    pub tenant_name: Option<String>,
    /// Limit on connecting to the feed server (250ms, 10s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Limit on a whole request to the feed server, body included.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub request_timeout: Option<Duration>,
    /// Refuse feed responses larger than this.
    #[arg(long, value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    /// Refuse a feed that removes more than this percentage of the installed prefixes.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_shrink_percent: Option<u8>,
    /// Refuse a feed whose added and removed prefixes exceed this percentage of the installed.
    #[arg(long, value_name = "PERCENT")]
    pub max_churn_percent: Option<u16>,
    /// Refuse IPv4 prefixes shorter than this.
    #[arg(long, value_name = "LEN")]
    pub min_prefix_len_v4: Option<u8>,
    /// Refuse IPv6 prefixes shorter than this.
    #[arg(long, value_name = "LEN")]
    pub min_prefix_len_v6: Option<u8>,
    /// Categories that go direct (repeat): Optimize, Allow, Default.
    #[arg(long = "direct", value_name = "CATEGORY")]
    pub direct: Vec<CategoryName>,
    /// Mark for direct packets, VALUE/MASK: only the bits in MASK are changed.
    #[arg(long, value_name = "VALUE/MASK")]
    pub mark: Option<Mark>,
    /// Send packets whose port matches no rule of their prefix to the tunnel.
    #[arg(long)]
    pub strict_ports: bool,
    /// A prefix that always goes direct, as Optimize by address (repeat).
    #[arg(long = "include", value_name = "PREFIX")]
    pub include: Vec<ipnet::IpNet>,
    /// A prefix that never goes direct, even inside a feed prefix (repeat).
    #[arg(long = "exclude", value_name = "PREFIX")]
    pub exclude: Vec<ipnet::IpNet>,
    /// Let --include hold short or special-purpose prefixes.
    #[arg(long)]
    pub include_special: bool,
    /// Log every kernel decision (one line per packet: for debugging only).
    #[arg(long)]
    pub debug_log: bool,
    /// Detach from the interfaces when the agent exits.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// What a dead direct uplink does: tunnel (check, and fail over) or none (check nothing).
    #[arg(long, value_enum, value_name = "MODE")]
    pub health_failover: Option<Failover>,
    /// The direct uplink's interface (its link state is watched).
    #[arg(long, value_name = "IFACE")]
    pub health_interface: Option<String>,
    /// A probe through the direct uplink (repeat): tcp://ADDR:PORT, icmp://ADDR, http(s)://URL.
    #[arg(long = "health-target", value_name = "TARGET")]
    pub health_targets: Vec<Target>,
    /// Whether any target or all must answer.
    #[arg(long, value_enum)]
    pub health_require: Option<Require>,
    /// Time between probe rounds.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_interval: Option<Duration>,
    /// Limit on one probe.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Failed rounds in a row that take the uplink down.
    #[arg(long, value_name = "N")]
    pub health_fail_after: Option<u32>,
    /// Good rounds in a row that bring it back.
    #[arg(long, value_name = "N")]
    pub health_recover_after: Option<u32>,
    /// Probe rounds the quality figures (RTT, jitter, loss) are computed over.
    #[arg(long, value_name = "ROUNDS")]
    pub health_window: Option<u32>,
    /// Entries of the flow table (takes effect at start).
    #[arg(long, value_name = "N")]
    pub flows_table_size: Option<u32>,
    /// Kernel memory for the compiled index, MiB; 0 turns it off (takes effect at start).
    #[arg(long, value_name = "MIB")]
    pub index_memory_mib: Option<u32>,
    /// A TCP flow idle this long is classified afresh.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub flows_tcp_idle: Option<Duration>,
    /// The same for other flows.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub flows_other_idle: Option<Duration>,
}

impl ConfigArgs {
    /// Defaults, then the file, then these flags; validated.
    pub fn effective(&self, global: &GlobalArgs) -> anyhow::Result<Config> {
        let mut config = Config::load(self.config.as_deref())?;
        self.apply(&mut config, global);
        config.validate()?;
        Ok(config)
    }

    fn apply(&self, config: &mut Config, global: &GlobalArgs) {
        let Self {
            config: _,
            interfaces,
            mode,
            feed_url,
            instance,
            service_areas,
            no_ipv6,
            poll_interval,
            allow_http,
            tenant_name,
            connect_timeout,
            request_timeout,
            max_body_bytes,
            max_shrink_percent,
            max_churn_percent,
            min_prefix_len_v4,
            min_prefix_len_v6,
            direct,
            mark,
            strict_ports,
            include,
            exclude,
            include_special,
            debug_log,
            detach_on_exit,
            health_failover,
            health_interface,
            health_targets,
            health_require,
            health_interval,
            health_timeout,
            health_fail_after,
            health_recover_after,
            health_window,
            flows_table_size,
            index_memory_mib,
            flows_tcp_idle,
            flows_other_idle,
        } = self;
        if !interfaces.is_empty() {
            config.interfaces.clone_from(interfaces);
        }
        if let Some(pin_dir) = &global.pin_dir {
            config.pin_dir.clone_from(pin_dir);
        }
        set(&mut config.mode, *mode);
        if let Some(state_dir) = &global.state_dir {
            config.state_dir.clone_from(state_dir);
        }
        set(&mut config.feed.url, feed_url.clone());
        set(&mut config.feed.instance, instance.clone());
        if !service_areas.is_empty() {
            config.feed.service_areas.clone_from(service_areas);
        }
        config.feed.no_ipv6 |= no_ipv6;
        set(&mut config.feed.poll_interval, *poll_interval);
        config.feed.allow_http |= allow_http;
        if tenant_name.is_some() {
            config.feed.tenant_name.clone_from(tenant_name);
        }
        set(&mut config.feed.connect_timeout, *connect_timeout);
        set(&mut config.feed.request_timeout, *request_timeout);
        set(&mut config.feed.max_body_bytes, *max_body_bytes);
        set(&mut config.feed.max_shrink_percent, *max_shrink_percent);
        set(&mut config.feed.max_churn_percent, *max_churn_percent);
        set(&mut config.feed.min_prefix_len_v4, *min_prefix_len_v4);
        set(&mut config.feed.min_prefix_len_v6, *min_prefix_len_v6);
        if !direct.is_empty() {
            config.policy.direct.clone_from(direct);
        }
        set(&mut config.policy.mark, *mark);
        config.policy.strict_ports |= strict_ports;
        if !include.is_empty() {
            config.policy.include.clone_from(include);
        }
        if !exclude.is_empty() {
            config.policy.exclude.clone_from(exclude);
        }
        config.policy.include_special |= include_special;
        config.policy.debug_log |= debug_log;
        config.detach_on_exit |= detach_on_exit;
        let health = &mut config.health;
        set(&mut health.failover, *health_failover);
        if health_interface.is_some() {
            health.interface.clone_from(health_interface);
        }
        if !health_targets.is_empty() {
            health.targets.clone_from(health_targets);
        }
        set(&mut health.require, *health_require);
        set(&mut health.interval, *health_interval);
        set(&mut health.timeout, *health_timeout);
        set(&mut health.fail_after, *health_fail_after);
        set(&mut health.recover_after, *health_recover_after);
        set(&mut health.window, *health_window);
        set(&mut config.flows.table_size, *flows_table_size);
        set(&mut config.index.memory_mib, *index_memory_mib);
        set(&mut config.flows.tcp_idle, *flows_tcp_idle);
        set(&mut config.flows.other_idle, *flows_other_idle);
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    /// LAN-facing interfaces.
    #[arg(required = true, value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t)]
    pub mode: XdpModeName,
    /// Endpoints feed (JSON of `GET /endpoints/{instance}`) to install; without it, empty
    /// tries are seeded from the snapshot built into the binary and installed ones are kept.
    #[arg(long, value_name = "FILE")]
    pub feed_file: Option<PathBuf>,
    /// Mark for direct packets as VALUE/MASK; only the bits in MASK are changed.
    #[arg(long, value_name = "VALUE/MASK")]
    pub mark: Option<Mark>,
    /// Send packets whose port matches no rule of their prefix to the tunnel.
    #[arg(long)]
    pub strict_ports: bool,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Interfaces to detach from.
    #[arg(required = true, value_name = "IFACE")]
    pub ifaces: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print again every SECS seconds, with rates, until interrupted.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub watch: Option<u64>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::{CommandFactory as _, error::ErrorKind};

    use super::*;

    #[test]
    fn command_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The README's command block lists exactly the commands `--help` lists (the visible
    /// subcommands of the clap tree), and each command has its own help, so the documentation
    /// cannot drift from the CLI.
    #[test]
    fn readme_documents_exactly_the_commands_of_help() {
        let cli = Cli::command();
        let commands: BTreeSet<&str> = cli
            .get_subcommands()
            .filter(|command| !command.is_hide_set())
            .map(clap::Command::get_name)
            .collect();
        assert!(commands.len() >= 12, "{commands:?}");
        let readme = include_str!("../../README.md");
        let section = readme
            .split("## Command line")
            .nth(1)
            .expect("the README has a Command line section")
            .split("\n## ")
            .next()
            .unwrap_or_default();
        let block = section
            .split("```text")
            .nth(1)
            .expect("the Command line section opens with a text block")
            .split("```")
            .next()
            .unwrap_or_default();
        let documented: BTreeSet<&str> = block
            .lines()
            .filter(|line| line.starts_with("  ") && !line.trim().is_empty())
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        assert_eq!(
            documented, commands,
            "README's command block and --help differ"
        );
        for command in commands {
            let help = Cli::try_parse_from(["xdp-breakout", command, "--help"])
                .expect_err("--help stops parsing");
            assert_eq!(help.kind(), ErrorKind::DisplayHelp, "{command}: {help}");
            let text = help.to_string();
            assert!(
                text.contains(&format!("Usage: xdp-breakout {command}")),
                "{command}: {text}"
            );
        }
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli::try_parse_from([
            "xdp-breakout",
            "--pin-dir",
            "/sys/fs/bpf/t",
            "run",
            "--iface",
            "lan0",
            "--iface",
            "lan1",
            "--feed-url",
            "http://127.0.0.1:8080",
            "--allow-http",
            "--poll-interval",
            "5m",
            "--direct",
            "Optimize",
            "--mark",
            "0x10000/0x10000",
            "--config",
            "/nonexistent.toml",
        ])
        .unwrap();
        let Command::Run(RunArgs { config: args }) = cli.command else {
            panic!()
        };
        let mut config = Config::default();
        args.apply(&mut config, &cli.global);
        assert_eq!(config.interfaces, ["lan0", "lan1"]);
        assert_eq!(config.pin_dir, PathBuf::from("/sys/fs/bpf/t"));
        assert_eq!(config.feed.url, "http://127.0.0.1:8080");
        assert_eq!(config.feed.poll_interval, Duration::from_mins(5));
        assert_eq!(
            config.policy.mark,
            Mark {
                value: 0x1_0000,
                mask: 0x1_0000
            }
        );
        assert_eq!(config.policy.direct.len(), 1);
        let error = args.effective(&cli.global).unwrap_err().to_string();
        assert!(error.contains("reading /nonexistent.toml"), "{error}");
    }

    /// The systemd unit runs commands this CLI accepts.
    #[test]
    fn systemd_unit_commands_parse() {
        let unit = include_str!("../../dist/xdp-breakout.service");
        let commands: Vec<Vec<&str>> = unit
            .lines()
            .filter_map(|line| {
                line.strip_prefix("ExecStart=")
                    .or_else(|| line.strip_prefix("ExecStartPre="))
            })
            .map(|command| command.split_whitespace().collect())
            .collect();
        assert_eq!(commands.len(), 2);
        for command in commands {
            assert!(command[0].ends_with("/xdp-breakout"), "{command:?}");
            Cli::try_parse_from(&command).unwrap_or_else(|error| panic!("{command:?}: {error}"));
        }
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            ["xdp-breakout", "run", "--poll-interval", "soon"],
            ["xdp-breakout", "run", "--mark", "0x365/0"],
            ["xdp-breakout", "run", "--direct", "Fast"],
            ["xdp-breakout", "run", "--max-shrink-percent", "101"],
        ] {
            let error = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }
}
