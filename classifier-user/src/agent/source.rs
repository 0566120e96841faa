//! A source as the agent keeps it: its configuration, its first set id, the file the maps
//! hold of it, its status and its clock; the gate's limits it is judged by; and when it is
//! fetched next.

use std::time::Duration;

use crate::{
    feed::EndpointSet,
    gate::ChangeLimits,
    sources::{Kind, M365, Parsed, SourceConfig, fetch::Meta},
    state::SourceStatus,
};

/// A source as the agent keeps it.
pub(super) struct Source {
    pub config: SourceConfig,
    pub first: u32,
    /// Its last good file, compiled: what the maps hold of it.
    pub held: Option<(Parsed, Meta)>,
    pub status: SourceStatus,
    pub next_due: tokio::time::Instant,
}

impl Source {
    pub(super) fn new(config: SourceConfig, first: u32) -> Self {
        let status = SourceStatus {
            name: config.name.clone(),
            kind: config.kind.to_string(),
            location: config.location(),
            instance: (config.kind == Kind::M365)
                .then(|| crate::sources::source::m365_instance(&config).to_owned()),
            policy: if config.kind == Kind::M365 {
                "by category".to_owned()
            } else {
                classifier_common::action::name(
                    if config.category() == crate::feed::Category::Direct {
                        classifier_common::action::DIRECT
                    } else {
                        classifier_common::action::TUNNEL
                    },
                )
                .to_owned()
            },
            first_set: first.max(1),
            ..SourceStatus::default()
        };
        Self {
            config,
            first,
            held: None,
            status,
            next_due: tokio::time::Instant::now(),
        }
    }

    pub(super) fn hold(&mut self, parsed: Parsed, meta: Meta) {
        self.status.version = Some(version_of(&parsed, &meta));
        self.status.from = Some(meta.from.clone());
        (self.status.prefixes_v4, self.status.prefixes_v6) = (parsed.v4, parsed.v6);
        self.held = Some((parsed, meta));
    }

    pub fn sets(&self) -> &[EndpointSet] {
        self.held.as_ref().map_or(&[], |(parsed, _)| &parsed.sets)
    }

    /// The gate's limits of this source, and the keys that set them: its own, else
    /// `[feed]`'s, which every source takes by default.
    pub(super) fn limits(&self, feed: &crate::client::FeedConfig) -> ChangeLimits {
        let config = &self.config;
        // `[feed]`'s own keys are the m365 source's.
        let key = |own: bool, source_key, feed_key| {
            if own && config.name != M365 {
                source_key
            } else {
                feed_key
            }
        };
        ChangeLimits {
            max_shrink_percent: config.max_shrink_percent.unwrap_or(feed.max_shrink_percent),
            shrink_key: key(
                config.max_shrink_percent.is_some(),
                "max-shrink-percent",
                "feed.max-shrink-percent",
            ),
            max_churn_percent: Some(config.max_churn_percent.unwrap_or(feed.max_churn_percent)),
            churn_key: key(
                config.max_churn_percent.is_some(),
                "max-churn-percent",
                "feed.max-churn-percent",
            ),
            max_added_v4: config.max_added_v4.unwrap_or(feed.max_added_v4),
            max_added_v6: config.max_added_v6.unwrap_or(feed.max_added_v6),
            added_key: key(
                config.max_added_v4.is_some() || config.max_added_v6.is_some(),
                "max-added-v4, max-added-v6",
                "feed.max-added-v4, feed.max-added-v6",
            ),
        }
    }
}

/// The version a source's file is known by: the one the service or the file states, else
/// its content hash's first 16 digits.
pub(super) fn version_of(parsed: &Parsed, meta: &Meta) -> String {
    meta.version
        .clone()
        .or_else(|| parsed.version.clone())
        .unwrap_or_else(|| format!("sha256:{}", &meta.sha256[..16]))
}

/// The wait before the next try after `failures` consecutive failures: 30 s doubling, at
/// most the refresh interval.
#[must_use]
pub fn backoff(failures: u32, interval: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(30)
        .saturating_mul(1 << exponent)
        .min(interval)
}

/// The interval plus up to 10% random jitter, so that routers do not poll in step.
#[must_use]
pub fn jittered(interval: Duration) -> Duration {
    use std::hash::{BuildHasher as _, Hasher as _};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let tenth = interval.as_millis() / 10;
    let jitter = if tenth == 0 {
        0
    } else {
        u128::from(random) % tenth
    };
    interval.saturating_add(Duration::from_millis(u64::try_from(jitter).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_refresh_interval() {
        let hour = Duration::from_hours(1);
        assert_eq!(backoff(1, hour), Duration::from_secs(30));
        assert_eq!(backoff(2, hour), Duration::from_mins(1));
        assert_eq!(backoff(5, hour), Duration::from_mins(8));
        assert_eq!(backoff(40, hour), hour);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let hour = Duration::from_hours(1);
        for _ in 0..100 {
            let wait = jittered(hour);
            assert!(
                wait >= hour && wait < hour + Duration::from_mins(6),
                "{wait:?}"
            );
        }
    }
}
