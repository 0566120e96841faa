//! The goals the README's Performance section states, computed from the other sections'
//! figures of the same run: each a ratio or a time, with its bound and whether it holds.

use crate::{
    cost::{GoalInputs, size_label},
    report::{Figure, Section},
    throughput::ThroughputGoal,
};

/// A figure with its bound: `at most` when `upper`, else `at least`.
fn goal(name: String, value: f64, unit: &'static str, bound: f64, upper: bool) -> Figure {
    let met = if upper {
        value <= bound
    } else {
        value >= bound
    };
    Figure::new(name, value, unit).note(format!(
        "goal {} {bound}: {}",
        if upper { "<=" } else { ">=" },
        if met { "met" } else { "MISSED" }
    ))
}

/// Goal 6: learning does not grow with the table installed.
pub fn dns(union_p99_ms: f64) -> Figure {
    goal(
        "6. DNS answer to map, p99, with the AWS + Azure + Microsoft 365 union installed"
            .to_owned(),
        union_p99_ms,
        "ms",
        1.0,
        true,
    )
}

/// Goal 4's periodic check: what a poll pays at a million prefixes a family.
pub fn check(check_1m_ms: f64) -> Figure {
    goal(
        "4. the periodic check for other writers at 1M prefixes a family (the slowest CPU time \
         of a whole walk)"
            .to_owned(),
        check_1m_ms,
        "ms",
        10.0,
        true,
    )
}

pub fn section(
    cost: &GoalInputs,
    throughput: &[ThroughputGoal],
    flow_gain: &[(String, f64)],
    diff_ms: f64,
    check_1m_ms: f64,
    dns_union_p99_ms: f64,
) -> Section {
    let mut section = Section::new(
        "Goals",
        "ratios within this run: the largest synthetic table against the real feed, the \
         classifier against nftables on the same path, the index's memory against the trie's, \
         a DNS answer's way to the map",
    );
    let largest = size_label(cost.largest);
    for (family, real, large) in &cost.first_packet {
        section.push(goal(
            format!("1. first packet (many destinations), {largest} / real feed, {family}"),
            large / real,
            "x",
            2.0,
            true,
        ));
    }
    for (family, real, large) in &cost.flow_hit {
        section.push(goal(
            format!("2. flow hit, {largest} / real feed, {family}"),
            large / real,
            "x",
            1.1,
            true,
        ));
    }
    for entry in throughput.iter().filter(|entry| entry.size >= 100_000) {
        section.push(goal(
            format!("3. classifier / nftables, {}", entry.label),
            entry.ratio,
            "x",
            2.0,
            false,
        ));
    }
    // With the flow table on (the default), at the real feed and the large tables.
    for entry in throughput
        .iter()
        .filter(|entry| entry.label.starts_with("flow table on"))
        .filter(|entry| entry.size == 0 || entry.size >= 100_000)
    {
        section.push(goal(
            format!(
                "3. ns added over no classification / nftables', {}",
                entry.label
            ),
            entry.added,
            "x",
            0.3,
            true,
        ));
    }
    for (family, ready, _) in &cost.load {
        section.push(goal(
            format!("4. {largest} {family} prefixes from empty until the index is live"),
            *ready,
            "ms",
            500.0,
            true,
        ));
    }
    section.push(goal(
        "4. the real feed's update (2026033100 -> 2026043000) until the index is live".to_owned(),
        diff_ms,
        "ms",
        1.0,
        true,
    ));
    for (family, first, hit) in &cost.hit_vs_first {
        section.push(goal(
            format!("7. flow hit / first packet (one packet), real feed, {family}"),
            hit / first,
            "x",
            0.8,
            true,
        ));
    }
    for (table, gain) in flow_gain.iter().filter(|(table, _)| table == "real feed") {
        section.push(goal(
            format!("8. veth Mpps, flow table on / every packet classified, {table}"),
            *gain,
            "x",
            1.0,
            false,
        ));
    }
    section.push(check(check_1m_ms));
    for (family, index, trie) in &cost.memory {
        section.push(goal(
            format!("5. index memory (both halves) / trie memory, {largest} {family}"),
            index / trie,
            "x",
            2.0,
            true,
        ));
    }
    section.push(dns(dns_union_p99_ms));
    section
}
