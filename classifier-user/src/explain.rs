//! What the data plane decides for an address, asked of the live maps, and the feed's words
//! for it (service areas, endpoint sets), for `lookup`, `prefixes` and `stats`.

use std::{net::IpAddr, path::Path};

use classifier_common::{PrefixRules, category, stat};
use ipnet::IpNet;

use crate::{
    EMBEDDED_FEED,
    compile::{Compiled, compile},
    datapath::{DatapathError, Maps},
    feed::{EndpointSet, Feed},
    state::State,
};

/// The decision for one `(address, protocol, port)`, the same the kernel programs make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The longest installed prefix that holds the address.
    pub prefix: Option<IpNet>,
    pub category: u8,
    /// The endpoint set that decided (0: none, or an operator prefix).
    pub set_id: u16,
    /// A [`stat`] reason index.
    pub reason: u32,
    pub action: u8,
    /// The entry that decided.
    pub rules: Option<PrefixRules>,
}

/// The live tries, policy and config, read once for many questions.
pub struct Oracle<'a> {
    maps: &'a Maps,
    policy: [u8; category::COUNT as usize],
    config: classifier_common::Config,
}

impl<'a> Oracle<'a> {
    pub fn new(maps: &'a Maps) -> Result<Self, DatapathError> {
        Ok(Self {
            maps,
            policy: maps.policy()?,
            config: maps.config()?,
        })
    }

    #[must_use]
    pub const fn config(&self) -> &classifier_common::Config {
        &self.config
    }

    /// Decides as `breakout` does, with the same `classifier_common::decide`; `port` is
    /// `None` for a packet without ports.
    pub fn decide(
        &self,
        addr: IpAddr,
        proto: u8,
        port: Option<u16>,
    ) -> Result<Decision, DatapathError> {
        let rules = self.maps.lookup(addr)?;
        let decided = classifier_common::decide(
            rules.as_ref(),
            proto,
            port,
            false,
            self.config.flags,
            |category| self.policy.get(usize::from(category)).copied(),
        );
        Ok(Decision {
            prefix: rules.and_then(|rules| {
                IpNet::new(addr, rules.prefix_len)
                    .ok()
                    .map(|net| net.trunc())
            }),
            category: decided.category,
            set_id: decided.set_id,
            reason: decided.reason,
            action: decided.action,
            rules,
        })
    }
}

/// The name of a [`stat`] index.
#[must_use]
pub fn reason_name(reason: u32) -> &'static str {
    stat::NAMED
        .iter()
        .find(|(index, _)| *index == reason)
        .map_or("unknown", |(_, name)| name)
}

/// The endpoint sets of every source the maps were built from, when that is known: the
/// state directory's record ([`crate::state::Union`]) while the maps still hold exactly what
/// it describes, or the embedded snapshot when they hold exactly that. Otherwise (another
/// process filled the maps from a file, another state directory, an operator's edits) no
/// record names the sets, and callers say so instead of naming sets the maps do not hold.
pub struct Catalog {
    sets: Vec<EndpointSet>,
    /// What the record says the maps hold, for messages; `None` when no record does.
    pub source: Option<String>,
    /// The sources the maps hold: name, kind and first set id.
    pub sources: Vec<(String, crate::sources::Kind, u32)>,
    /// Addresses learned from DNS answers, as the agent last recorded them.
    pub learned: Vec<crate::state::LearnedRow>,
}

impl Catalog {
    /// The catalog of `installed`, the entries the maps hold now.
    #[must_use]
    pub fn load(state_dir: &Path, installed: &Compiled) -> Self {
        let digest = installed.digest();
        let state = State::open_existing(state_dir).ok();
        if let Some(union) = state
            .as_ref()
            .and_then(State::union)
            .filter(|union| union.entries == digest)
        {
            let mut catalog = Self {
                sets: Vec::new(),
                source: Some(union.versions()),
                sources: Vec::new(),
                learned: state
                    .as_ref()
                    .and_then(|state| state.learned().ok().flatten())
                    .map(|learned| learned.rows)
                    .unwrap_or_default(),
            };
            for source in union.sources {
                let Ok(kind) = source.kind.parse() else {
                    continue;
                };
                catalog.sources.push((source.name, kind, source.first_set));
                catalog.sets.extend(source.sets.into_iter().map(|set| {
                    EndpointSet {
                        id: set.id,
                        service_area: set.service_area,
                        category: crate::feed::Category::from_code(set.category)
                            .unwrap_or(crate::feed::Category::Default),
                        prefixes: set.prefixes,
                        tcp: Vec::new(),
                        udp: Vec::new(),
                        by_address: true,
                    }
                }));
            }
            return catalog;
        }
        if let Ok(feed) = Feed::parse(EMBEDDED_FEED)
            && compile(&feed).is_ok_and(|compiled| compiled.digest() == digest)
        {
            return Self {
                sets: feed.sets,
                source: Some(format!(
                    "embedded snapshot {}",
                    crate::EMBEDDED_FEED_VERSION
                )),
                sources: vec![(
                    crate::sources::M365.to_owned(),
                    crate::sources::Kind::M365,
                    0,
                )],
                learned: Vec::new(),
            };
        }
        Self {
            sets: Vec::new(),
            source: None,
            sources: Vec::new(),
            learned: Vec::new(),
        }
    }

    /// The name a learned address came from, when set `id` learned it.
    #[must_use]
    pub fn learned_from(&self, addr: IpAddr, id: u16) -> Option<&str> {
        self.learned
            .iter()
            .find(|row| row.address == addr && row.set == u32::from(id))
            .map(|row| row.name.as_str())
    }

    /// The source that set `id` belongs to: `operator` for 0, `m365` for `[feed]`'s ids,
    /// a `[[sources]]` name; `None` when no record the maps hold names it.
    #[must_use]
    pub fn source_of(&self, id: u16) -> Option<&str> {
        let id = u32::from(id);
        if id == 0 {
            return Some("operator");
        }
        self.sources
            .iter()
            .find(|(_, kind, first)| crate::sources::source::owns(*kind, *first, id))
            .map(|(name, _, _)| name.as_str())
            .or_else(|| {
                self.learned
                    .iter()
                    .find(|row| row.set == id)
                    .map(|row| row.source.as_str())
            })
    }

    /// The set ids of source `name`: `None` when the maps hold no source of that name.
    #[must_use]
    pub fn ids_of(&self, name: &str) -> Option<std::ops::Range<u32>> {
        if name == crate::sources::M365 {
            return Some(1..classifier_common::M365_SET_IDS);
        }
        if name == "operator" {
            return Some(0..1);
        }
        self.sources
            .iter()
            .find(|(source, _, _)| source == name)
            .map(|(_, kind, first)| match kind {
                crate::sources::Kind::M365 => *first..*first + classifier_common::M365_SET_IDS,
                _ => *first..*first + 1,
            })
    }

    #[must_use]
    pub fn set(&self, id: u16) -> Option<&EndpointSet> {
        self.sets.iter().find(|set| set.id == u32::from(id))
    }

    /// Service area of a set; `operator` for prefixes from the configuration, `unknown` when
    /// no feed the maps hold names it.
    #[must_use]
    pub fn service_area(&self, id: u16) -> &str {
        match id {
            0 => "operator",
            id => self.set(id).map_or_else(
                || {
                    self.learned
                        .iter()
                        .find(|row| row.set == u32::from(id))
                        .map_or("unknown", |row| row.service_area.as_str())
                },
                |set| set.service_area.as_str(),
            ),
        }
    }

    /// Ids of the sets whose prefixes hold `addr`; without a known feed, the sets named by
    /// the entry that holds it (`rules`), which is all the maps know.
    #[must_use]
    pub fn sets_holding(&self, addr: IpAddr, rules: Option<&PrefixRules>) -> Vec<u16> {
        if self.source.is_some() {
            return self
                .sets
                .iter()
                .filter(|set| set.prefixes.iter().any(|net| net.contains(&addr)))
                .filter_map(|set| u16::try_from(set.id).ok())
                .collect();
        }
        let Some(rules) = rules else {
            return Vec::new();
        };
        let mut ids: Vec<u16> = rules.rules[..usize::from(rules.n_rules).min(rules.rules.len())]
            .iter()
            .map(|rule| rule.set_id)
            .chain([rules.addr_set])
            .filter(|id| *id != 0)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}
