//! The tables the classifier is measured with: the real feed, and synthetic ones of random
//! prefixes of realistic lengths, each with one to three port rules.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Context as _;
use classifier_common::{LpmKeyV4, LpmKeyV6, PortRule, PrefixRules, category, proto};
use classifier_user::{
    compile::{Compiled, compile},
    feed::Feed,
};
use harness_common::Rng;

/// The 2026033100 Worldwide feed (the embedded one is 2026043000).
pub static FEED_2026033100: &[u8] =
    include_bytes!("../../tests/fixtures/m365-worldwide-endpoints-2026033100.json");

/// Prefix lengths roughly as in the global IPv4 routing table: /24 dominates.
const V4_LENGTHS: [(u32, u8); 9] = [
    (55, 24),
    (10, 23),
    (12, 22),
    (5, 21),
    (6, 20),
    (4, 19),
    (3, 18),
    (2, 17),
    (3, 16),
];

/// IPv6: /48 dominates, then the /32 of allocations.
const V6_LENGTHS: [(u32, u8); 7] = [
    (50, 48),
    (10, 44),
    (8, 40),
    (5, 36),
    (20, 32),
    (4, 29),
    (3, 64),
];

/// A prefix's rules: always UDP 3478-3481 (Teams media, Optimize), and up to two TCP rules
/// (443 Allow, 80 Default), in the order the compiler emits them (by protocol, then port).
fn rules(rng: &mut Rng, prefix_len: u8) -> PrefixRules {
    let set_id = u16::try_from(1 + rng.below(4000)).expect("below 4096");
    let rule = |port_lo, port_hi, proto, category| PortRule {
        port_lo,
        port_hi,
        proto,
        category,
        set_id,
    };
    let mut list = Vec::with_capacity(3);
    let extra = rng.below(3);
    if extra >= 2 {
        list.push(rule(80, 80, proto::TCP, category::DEFAULT));
    }
    if extra >= 1 {
        list.push(rule(443, 443, proto::TCP, category::ALLOW));
    }
    list.push(rule(3478, 3481, proto::UDP, category::OPTIMIZE));
    let mut value = PrefixRules::EMPTY;
    value.n_rules = u8::try_from(list.len()).expect("three at most");
    value.rules[..list.len()].copy_from_slice(&list);
    value.addr_category = category::OPTIMIZE;
    value.addr_set = set_id;
    value.prefix_len = prefix_len;
    value
}

/// `n` distinct random IPv4 prefixes in 1.0.0.0 - 223.255.255.255.
#[must_use]
pub fn synthetic_v4(n: usize, seed: u64) -> Compiled {
    let mut rng = Rng::new(seed);
    let mut v4 = BTreeMap::new();
    while v4.len() < n {
        let len = rng.weighted(&V4_LENGTHS);
        let addr = (rng.next_u64() >> 32) as u32;
        let addr = u32::from(Ipv4Addr::new(1, 0, 0, 0)) + addr % (223 << 24);
        let addr = addr & (u32::MAX << (32 - u32::from(len)));
        let key = LpmKeyV4 {
            prefix_len: u32::from(len),
            addr: addr.to_be_bytes(),
        };
        v4.entry(key).or_insert_with(|| rules(&mut rng, len));
    }
    Compiled {
        v4,
        v6: BTreeMap::new(),
    }
}

/// `n` distinct random IPv6 prefixes in 2000::/3.
#[must_use]
pub fn synthetic_v6(n: usize, seed: u64) -> Compiled {
    let mut rng = Rng::new(seed);
    let mut v6 = BTreeMap::new();
    while v6.len() < n {
        let len = rng.weighted(&V6_LENGTHS);
        let high = u128::from(rng.next_u64()) << 64;
        let addr = (high >> 3) | (0b001 << 125);
        let addr = addr & (u128::MAX << (128 - u32::from(len)));
        let key = LpmKeyV6 {
            prefix_len: u32::from(len),
            addr: addr.to_be_bytes(),
        };
        v6.entry(key).or_insert_with(|| rules(&mut rng, len));
    }
    Compiled {
        v4: BTreeMap::new(),
        v6,
    }
}

/// Up to `count` destinations, each in a different installed prefix (every prefix once
/// before any repeats), with random host bits: the packets of many different flows.
#[must_use]
pub fn destinations(compiled: &Compiled, count: usize, seed: u64) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let mut rng = Rng::new(seed);
    let v4: Vec<&LpmKeyV4> = compiled.v4.keys().collect();
    let v6: Vec<&LpmKeyV6> = compiled.v6.keys().collect();
    let mut pick_v4 = Vec::with_capacity(count);
    for index in sample(&mut rng, v4.len(), count) {
        let key = v4[index];
        let host = ((rng.next_u64() >> 32) as u32)
            .checked_shr(key.prefix_len)
            .unwrap_or(0);
        let addr = u32::from_be_bytes(key.addr) | host;
        pick_v4.push(IpAddr::V4(Ipv4Addr::from(addr)));
    }
    let mut pick_v6 = Vec::with_capacity(count);
    for index in sample(&mut rng, v6.len(), count) {
        let key = v6[index];
        let random = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        let host = random.checked_shr(key.prefix_len).unwrap_or(0);
        let addr = u128::from_be_bytes(key.addr) | host;
        pick_v6.push(IpAddr::V6(Ipv6Addr::from(addr)));
    }
    (pick_v4, pick_v6)
}

/// `count` indices below `len`: a random permutation's prefix, cycled when `len` is smaller.
fn sample(rng: &mut Rng, len: usize, count: usize) -> Vec<usize> {
    if len == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..len).collect();
    let take = count.min(len);
    for i in 0..take {
        let j = i + rng.below(len - i);
        order.swap(i, j);
    }
    order.truncate(take);
    order.iter().copied().cycle().take(count).collect()
}

/// A feed compiled, as the agent would install it.
pub fn compile_feed(body: &[u8]) -> anyhow::Result<Compiled> {
    let feed = Feed::parse(body).context("parsing the feed")?;
    compile(&feed).context("compiling the feed")
}
