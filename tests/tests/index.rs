//! The compiled index against the tries on the real kernel: the same answer for a million
//! addresses over random tables and over every feed in `tests/fixtures`, the same verdicts
//! through the XDP program, no gap while the index switches halves, and the tries alone
//! when a table does not fit.
#![allow(clippy::cast_possible_truncation, reason = "random bits cut to size")]

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicBool, Ordering},
};

use aya::programs::{TestRun as _, TestRunOptions};
use classifier_common::{
    Config, LpmKeyV4, LpmKeyV6, PortRule, PrefixRules, XdpMeta, category, decide, flags,
    index::{FIRST_FREE_SLOT, Packed, find_v4, find_v6},
    proto, stat,
};
use classifier_user::{
    compile::{Compiled, compile},
    datapath::{DEFAULT_POLICY, Datapath, MapSizes, Maps},
    feed::Feed,
};
use harness_common::Rng;
use tests::packet::{L4, Spec};

/// Rules as the compiler makes them: up to three port rules, any category, set ids of both
/// the feed and an operator's lists (0), some `exclude` entries (category none).
fn random_rules(rng: &mut Rng, len: u32) -> PrefixRules {
    let mut rules = PrefixRules::EMPTY;
    let set = u16::try_from(rng.next_mod(300)).expect("small");
    rules.addr_set = set;
    rules.addr_category = u8::try_from(rng.next_mod(4)).expect("small");
    rules.prefix_len = u8::try_from(len).expect("at most 128");
    let n = usize::try_from(rng.next_mod(4)).expect("small");
    for i in 0..n {
        // Some rules hold the test frames' port (UDP 3478).
        let port_lo = if rng.next_mod(4) == 0 {
            3470
        } else {
            u16::try_from(rng.next_mod(60_000)).expect("small")
        };
        rules.rules[i] = PortRule {
            port_lo,
            port_hi: port_lo + u16::try_from(rng.next_mod(100)).expect("small"),
            proto: if rng.next_mod(2) == 0 {
                proto::TCP
            } else {
                proto::UDP
            },
            category: u8::try_from(1 + rng.next_mod(3)).expect("small"),
            set_id: set,
        };
    }
    rules.n_rules = u8::try_from(n).expect("small");
    rules
}

/// `count` prefixes of each family, of every length, crowded into a few /8s (IPv4) and a
/// few /20s (IPv6) so that they nest, share nodes and leave single-prefix tails.
fn random_table(seed: u64, count: usize) -> Compiled {
    let mut rng = Rng::new(seed);
    let mut compiled = Compiled::default();
    while compiled.v4.len() < count {
        // No prefix shorter than /4, so that some addresses match none.
        let len = 4 + u32::try_from(rng.next_mod(29)).expect("small");
        let addr = (rng.next_u64() as u32 & 0x0f0f_ffff) | 0x2000_0000;
        let masked = addr
            .checked_shr(32 - len)
            .unwrap_or(0)
            .checked_shl(32 - len);
        let key = LpmKeyV4 {
            prefix_len: len,
            addr: masked.unwrap_or(0).to_be_bytes(),
        };
        let rules = random_rules(&mut rng, len);
        compiled.v4.insert(key, rules);
    }
    while compiled.v6.len() < count {
        let len = 8 + u32::try_from(rng.next_mod(121)).expect("small");
        let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        let addr = (random & !(0x000f_ffff_u128 << 108)) | (0x2a03_u128 << 112);
        let masked = addr
            .checked_shr(128 - len)
            .unwrap_or(0)
            .checked_shl(128 - len);
        let key = LpmKeyV6 {
            prefix_len: len,
            addr: masked.unwrap_or(0).to_be_bytes(),
        };
        let rules = random_rules(&mut rng, len);
        compiled.v6.insert(key, rules);
    }
    compiled
}

fn feed(path: &str) -> Compiled {
    let body = std::fs::read(path).unwrap_or_else(|error| panic!("{path}: {error}"));
    compile(&Feed::parse(&body).expect("fixture parses")).expect("fixture compiles")
}

/// The programs with private maps and an index of `slots` slots; `None` (skip) when BPF is
/// unavailable outside CI.
fn load(slots: u32) -> Option<(Datapath, Maps)> {
    let sizes = MapSizes {
        flows: None,
        index_slots: Some(slots),
    };
    let mut datapath = tests::load_private(&sizes)?;
    let mut maps = datapath.maps().expect("maps of a loaded object");
    maps.set_policy(DEFAULT_POLICY).expect("policy");
    maps.set_config(&Config {
        flags: flags::FLOWS_OFF,
        ..Config::default()
    })
    .expect("config");
    Some((datapath, maps))
}

/// `count` addresses: most inside a random installed prefix (random host bits), some just
/// below one, some anywhere.
fn addresses(compiled: &Compiled, count: usize, seed: u64) -> Vec<IpAddr> {
    let mut rng = Rng::new(seed);
    let v4: Vec<&LpmKeyV4> = compiled.v4.keys().collect();
    let v6: Vec<&LpmKeyV6> = compiled.v6.keys().collect();
    (0..count)
        .map(|i| {
            let pick = rng.next_u64();
            if i % 2 == 0 && !v4.is_empty() {
                let key = v4[(pick % v4.len() as u64) as usize];
                let base = u32::from_be_bytes(key.addr);
                let addr = match i % 10 {
                    0 => rng.next_u64() as u32,
                    2 => base.wrapping_sub(1),
                    _ => {
                        base | (rng.next_u64() as u32)
                            .checked_shr(key.prefix_len)
                            .unwrap_or(0)
                    }
                };
                IpAddr::V4(Ipv4Addr::from(addr))
            } else if !v6.is_empty() {
                let key = v6[(pick % v6.len() as u64) as usize];
                let base = u128::from_be_bytes(key.addr);
                let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
                let addr = match i % 10 {
                    1 => random,
                    3 => base.wrapping_sub(1),
                    _ => base | random.checked_shr(key.prefix_len).unwrap_or(0),
                };
                IpAddr::V6(Ipv6Addr::from(addr))
            } else {
                IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32))
            }
        })
        .collect()
}

/// The kernel's trie and the kernel's index memory (walked by the code the XDP program runs)
/// answer the same for every address.
fn check_equivalent(name: &str, maps: &Maps, addrs: &[IpAddr]) {
    let index = maps.index().expect("index maps");
    let half = index
        .live_half()
        .unwrap_or_else(|| panic!("{name}: no live index"));
    let mut inside = 0usize;
    for addr in addrs {
        let trie = maps.lookup(*addr).expect("trie lookup").map(|mut rules| {
            rules.prefix_len = 0;
            rules
        });
        let leaf = match addr {
            IpAddr::V4(addr) => find_v4(half, addr.octets()),
            IpAddr::V6(addr) => find_v6(half, addr.octets()),
        };
        let leaf = leaf.unwrap_or_else(|| panic!("{name}: {addr}: the walk left the half"));
        let from_index = Packed::at(half, leaf)
            .unwrap_or_else(|| panic!("{name}: {addr}: unreadable rules"))
            .map(|packed| packed.unpack().expect("whole rules"));
        assert_eq!(from_index, trie, "{name}: {addr}");
        inside += usize::from(trie.is_some());
    }
    // Most addresses were drawn inside prefixes: a table the index misses entirely would
    // pass the comparison above only if the trie were empty too.
    assert!(
        inside * 2 > addrs.len(),
        "{name}: {inside} of {} matched",
        addrs.len()
    );
}

#[test]
fn index_and_trie_agree_on_a_million_addresses_over_random_tables() {
    for (seed, count) in [(1, 20_000), (2, 100_000)] {
        let compiled = random_table(seed, count);
        let Some((_datapath, mut maps)) = load(1 << 23) else {
            return;
        };
        let report = maps.apply(&compiled).expect("apply");
        assert!(report.index.is_some(), "index: {:?}", report.index_error);
        let name = format!("random table {seed} ({count} IPv4 and {count} IPv6 prefixes)");
        check_equivalent(&name, &maps, &addresses(&compiled, 1_000_000, seed));
    }
}

#[test]
fn index_and_trie_agree_on_every_fixture_feed() {
    let mut paths: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"))
        .expect("fixtures")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.contains("-endpoints-"))
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths.len(),
        4,
        "the fixture feeds (the Intune one too): {paths:?}"
    );
    for path in paths {
        let compiled = feed(path.to_str().expect("utf-8 path"));
        let Some((_datapath, mut maps)) = load(1 << 20) else {
            return;
        };
        let report = maps.apply(&compiled).expect("apply");
        let index = report
            .index
            .unwrap_or_else(|| panic!("{:?}", report.index_error));
        // A feed of a few dozen prefixes a family: built, but the kernel keeps to the tries.
        assert!(!index.v4 && !index.v6, "{index:?}");
        assert_eq!(maps.index().expect("index maps").walks(), (false, false));
        check_equivalent(
            &path.display().to_string(),
            &maps,
            &addresses(&compiled, 1_000_000, 7),
        );
    }
}

/// A UDP frame to `dst`, port 3478 (Teams media, in many port rules).
fn frame(dst: IpAddr) -> Vec<u8> {
    Spec::new(dst, L4::Udp(3478)).build()
}

/// The XDP program's metadata for `frame`.
fn verdict(datapath: &mut Datapath, frame: &[u8]) -> XdpMeta {
    let mut out = vec![0u8; frame.len() + 64];
    datapath
        .xdp()
        .expect("xdp program")
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .expect("test run");
    XdpMeta::from_bytes(&out).expect("metadata")
}

#[test]
fn the_xdp_program_decides_the_same_by_index_and_by_trie() {
    let compiled = random_table(3, 20_000);
    let Some((mut datapath, mut maps)) = load(1 << 22) else {
        return;
    };
    let report = maps.apply(&compiled).expect("apply");
    let index = report
        .index
        .unwrap_or_else(|| panic!("{:?}", report.index_error));
    assert!(
        index.v4 && index.v6,
        "20000 prefixes a family: walked for both"
    );
    let frames: Vec<Vec<u8>> = addresses(&compiled, 20_000, 3)
        .into_iter()
        .map(frame)
        .collect();
    let by_index: Vec<XdpMeta> = frames.iter().map(|f| verdict(&mut datapath, f)).collect();
    maps.index_mut()
        .expect("index maps")
        .disable()
        .expect("off");
    assert!(maps.index().expect("index maps").live_half().is_none());
    let by_trie: Vec<XdpMeta> = frames.iter().map(|f| verdict(&mut datapath, f)).collect();
    assert_eq!(by_index.len(), by_trie.len());
    let mut reasons = BTreeMap::new();
    for (i, (index, trie)) in by_index.iter().zip(&by_trie).enumerate() {
        assert_eq!(index, trie, "frame {i}");
        *reasons.entry(index.reason).or_insert(0usize) += 1;
    }
    // The table exercises every outcome of a lookup, not only misses.
    for reason in [
        stat::NO_MATCH,
        stat::MATCH_PORT,
        stat::MATCH_ADDR,
        stat::EXCLUDED,
    ] {
        assert!(
            reasons.contains_key(&u8::try_from(reason).expect("small")),
            "no frame decided by reason {reason}: {reasons:?}"
        );
    }
}

/// Two tables that share half their prefixes (with other rules on some): while a thread
/// switches between them as fast as it can, every packet to a shared prefix finds one.
/// (Both are checked alone first; the switches start from an installed table.)
#[test]
fn no_packet_misses_a_shared_prefix_while_the_index_switches() {
    let Some((mut datapath, maps)) = load(1 << 22) else {
        return;
    };
    let shared = random_table(4, 5_000);
    let mut a = shared.clone();
    let mut b = shared.clone();
    let extra_a = random_table(5, 5_000);
    let extra_b = random_table(6, 5_000);
    a.v4.extend(
        extra_a
            .v4
            .into_iter()
            .filter(|(key, _)| !shared.v4.contains_key(key)),
    );
    b.v4.extend(
        extra_b
            .v4
            .into_iter()
            .filter(|(key, _)| !shared.v4.contains_key(key)),
    );
    // Some shared prefixes change their rules between the two tables.
    for (i, rules) in b.v4.values_mut().enumerate() {
        if i % 7 == 0 {
            rules.addr_category = category::OPTIMIZE;
        }
    }
    // Addresses whose longest prefix is a shared one in both tables.
    let candidates = addresses(&shared, 4_000, 8);
    let frames: Vec<Vec<u8>> = candidates
        .into_iter()
        .filter(|addr| {
            let IpAddr::V4(v4) = addr else { return false };
            let longest = |table: &Compiled| {
                (0..=32u32).rev().find_map(|len| {
                    let bits = u32::from(*v4).checked_shr(32 - len).unwrap_or(0);
                    let key = LpmKeyV4 {
                        prefix_len: len,
                        addr: bits.checked_shl(32 - len).unwrap_or(0).to_be_bytes(),
                    };
                    table.v4.get(&key).map(|_| key)
                })
            };
            let found = longest(&shared);
            found.is_some() && longest(&a) == found && longest(&b) == found
        })
        .map(frame)
        .collect();
    assert!(frames.len() > 500, "{} shared addresses", frames.len());
    // Each table alone first: every frame finds its shared prefix.
    let mut maps = maps;
    for (name, table) in [("a", &a), ("b", &b)] {
        maps.apply(table).expect("apply");
        check_equivalent(name, &maps, &addresses(table, 100_000, 10));
        for (i, frame) in frames.iter().enumerate() {
            let meta = verdict(&mut datapath, frame);
            assert_ne!(
                u32::from(meta.reason),
                stat::NO_MATCH,
                "table {name}, frame {i}"
            );
        }
    }
    let done = AtomicBool::new(false);
    let switches = std::thread::scope(|scope| {
        let switcher = scope.spawn(|| {
            let mut maps = maps;
            let mut switches = 0;
            for round in 0..40 {
                let table = if round % 2 == 0 { &a } else { &b };
                let report = maps.apply(table).expect("apply");
                assert!(report.index.is_some(), "index: {:?}", report.index_error);
                switches += 1;
            }
            done.store(true, Ordering::Release);
            switches
        });
        let mut checked = 0usize;
        while !done.load(Ordering::Acquire) {
            for frame in &frames {
                let meta = verdict(&mut datapath, frame);
                assert_ne!(
                    u32::from(meta.reason),
                    stat::NO_MATCH,
                    "a shared prefix went missing during a switch"
                );
                checked += 1;
            }
        }
        assert!(checked >= frames.len(), "{checked} packets checked");
        switcher.join().expect("switcher")
    });
    assert_eq!(switches, 40);
}

#[test]
fn a_table_too_big_for_the_index_is_classified_by_the_tries() {
    let compiled = random_table(9, 20_000);
    // Room for the direct tables and little more.
    let Some((mut datapath, mut maps)) = load(2 * (FIRST_FREE_SLOT + 100)) else {
        return;
    };
    let report = maps.apply(&compiled).expect("apply");
    assert!(report.index.is_none());
    let error = report.index_error.expect("the reason").to_string();
    assert!(error.contains("memory-mib"), "{error}");
    assert!(maps.index().expect("index maps").live_half().is_none());
    assert_eq!(maps.installed().expect("installed"), compiled);
    // The tries decide: frames to installed prefixes get what `decide` says of the trie.
    let mut matched = 0;
    for addr in addresses(&compiled, 2_000, 9) {
        let meta = verdict(&mut datapath, &frame(addr));
        let expect = decide(
            maps.lookup(addr).expect("trie lookup").as_ref(),
            proto::UDP,
            Some(3478),
            false,
            flags::FLOWS_OFF,
            |category| Some(DEFAULT_POLICY[usize::from(category)]),
        );
        assert_eq!(
            (
                meta.action,
                u32::from(meta.reason),
                meta.category,
                meta.set_id
            ),
            (expect.action, expect.reason, expect.category, expect.set_id),
            "{addr}"
        );
        matched += usize::from(expect.reason != stat::NO_MATCH);
    }
    assert!(matched > 1_000, "{matched} frames matched a prefix");

    // Memory 0: the index is off, and the tries decide without a word.
    let Some((_datapath, mut maps)) = load(MapSizes::index_slots(0)) else {
        return;
    };
    let report = maps.apply(&compiled).expect("apply");
    assert!(report.index.is_none() && report.index_error.is_none());
    assert!(!maps.index().expect("index maps").enabled());
}
