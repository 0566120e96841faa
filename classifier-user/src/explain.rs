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

/// `installed` without the host entries of `addresses`.
fn without(installed: &Compiled, addresses: &[IpAddr]) -> Compiled {
    let mut trimmed = installed.clone();
    for address in addresses {
        trimmed.remove(IpNet::from(*address));
    }
    trimmed
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
    /// The catalog of `installed`, the entries the maps hold now. Between the agent's applies
    /// the maps may also hold learned addresses written alone (`learned.json`'s `pending`):
    /// the record describes the maps when it describes them without exactly those entries.
    #[must_use]
    pub fn load(state_dir: &Path, installed: &Compiled) -> Self {
        let state = State::open_existing(state_dir).ok();
        let learned = state
            .as_ref()
            .and_then(|state| state.learned().ok().flatten())
            .unwrap_or_default();
        let union = state.as_ref().and_then(State::union).filter(|union| {
            union.entries == installed.digest()
                || (!learned.pending.is_empty()
                    && union.entries == without(installed, &learned.pending).digest())
        });
        if let Some(union) = union {
            let mut catalog = Self {
                sets: Vec::new(),
                source: Some(union.versions()),
                sources: Vec::new(),
                learned: learned.rows,
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
            // A pending address belongs to the sets that learned it, as the next apply's
            // record will say.
            for row in &catalog.learned {
                if let Some(set) = catalog.sets.iter_mut().find(|set| set.id == row.set)
                    && !set.prefixes.iter().any(|net| net.contains(&row.address))
                {
                    set.prefixes.push(IpNet::from(row.address));
                }
            }
            return catalog;
        }
        let digest = installed.digest();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{CatalogSet, LearnedFile, LearnedRow, Union, UnionSource};

    const LEARNED: &str = "44.10.0.1";

    /// A state directory whose union record holds one prefix of set 5 and the URL-only set
    /// 27, and whose `learned.json` lists `44.10.0.1` of set 27, pending or not; the maps
    /// hold the record's entries and that address.
    fn setup(what: &str, pending: bool) -> (std::path::PathBuf, Compiled) {
        let dir = std::env::temp_dir().join(format!(
            "xdp-breakout-explain-{what}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let state = State::open(&dir).unwrap();
        let mut recorded = Compiled::default();
        recorded.v4.insert(
            crate::compile::key_v4("52.112.0.0/14".parse().unwrap()),
            PrefixRules::EMPTY,
        );
        let mut installed = recorded.clone();
        installed.v4.insert(
            crate::compile::key_v4("44.10.0.1/32".parse().unwrap()),
            PrefixRules::EMPTY,
        );
        let set = |id, prefixes: &[&str]| CatalogSet {
            id,
            service_area: "Skype".to_owned(),
            category: 1,
            prefixes: prefixes.iter().map(|net| net.parse().unwrap()).collect(),
        };
        state
            .save_union(&Union {
                entries: recorded.digest(),
                applied_at: crate::time::Time(0),
                sources: vec![UnionSource {
                    name: "m365".to_owned(),
                    kind: "m365".to_owned(),
                    first_set: 0,
                    version: Some("2026043000".to_owned()),
                    sets: vec![set(5, &["52.112.0.0/14"]), set(27, &[])],
                }],
            })
            .unwrap();
        let address: IpAddr = LEARNED.parse().unwrap();
        state
            .save_learned(&LearnedFile {
                rows: vec![LearnedRow {
                    address,
                    name: "join.secure.skypeassets.com".to_owned(),
                    matched: "join.secure.skypeassets.com".to_owned(),
                    set: 27,
                    service_area: "Skype".to_owned(),
                    category: "Default".to_owned(),
                    source: "m365".to_owned(),
                    expires: crate::time::Time(4_000_000_000),
                }],
                pending: if pending { vec![address] } else { Vec::new() },
                ..LearnedFile::default()
            })
            .unwrap();
        (dir, installed)
    }

    #[test]
    fn an_address_written_alone_is_named_before_the_apply_records_it() {
        let (dir, installed) = setup("pending", true);
        let catalog = Catalog::load(&dir, &installed);
        let address: IpAddr = LEARNED.parse().unwrap();
        assert_eq!(catalog.source.as_deref(), Some("m365 2026043000"));
        assert_eq!(catalog.sets_holding(address, None), [27]);
        assert_eq!(
            catalog.learned_from(address, 27),
            Some("join.secure.skypeassets.com")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn entries_no_record_lists_leave_the_sets_unnamed() {
        // The same maps, but the address is not listed as written alone: another writer's.
        let (dir, installed) = setup("foreign", false);
        let catalog = Catalog::load(&dir, &installed);
        assert_eq!(catalog.source, None);
        assert!(
            catalog
                .sets_holding(LEARNED.parse().unwrap(), None)
                .is_empty()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
