//! One timestamp type for the state files and every `--json` output: whole seconds since the
//! epoch, written as RFC 3339 UTC (`2026-11-22T03:38:04Z`). It reads that form and, for state
//! files written before it, bare seconds.

use std::{
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Seconds since the epoch, UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    #[must_use]
    pub fn now() -> Self {
        Self(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
    }

    #[must_use]
    pub const fn secs(self) -> u64 {
        self.0
    }

    /// `secs` seconds later.
    #[must_use]
    pub const fn after(self, secs: u64) -> Self {
        Self(self.0.saturating_add(secs))
    }

    /// Reads `YYYY-MM-DDTHH:MM:SSZ`, the form [`fmt::Display`] writes.
    #[must_use]
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 20
            || [4, 7].iter().any(|&i| bytes[i] != b'-')
            || bytes[10] != b'T'
            || [13, 16].iter().any(|&i| bytes[i] != b':')
            || bytes[19] != b'Z'
        {
            return None;
        }
        let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
        let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
        let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
        if !(1..=12).contains(&month)
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 59
        {
            return None;
        }
        // Days from civil (Howard Hinnant's algorithm), the inverse of `Display`'s.
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y.rem_euclid(400);
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = era * 146_097 + doe - 719_468;
        let secs = days * 86400 + hour * 3600 + minute * 60 + second;
        u64::try_from(secs).ok().map(Self)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0;
        let days = i64::try_from(secs / 86400).unwrap_or(0);
        let rem = secs % 86400;
        // Civil from days (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Secs(u64),
            Text(String),
        }
        match Either::deserialize(deserializer)? {
            Either::Secs(secs) => Ok(Self(secs)),
            Either::Text(text) => Self::parse_rfc3339(&text).ok_or_else(|| {
                serde::de::Error::custom(format!("{text:?} is not YYYY-MM-DDTHH:MM:SSZ"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_and_read_back() {
        for (secs, text) in [
            (0, "1970-01-01T00:00:00Z"),
            (1_795_318_684, "2026-11-22T03:38:04Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (4_107_542_399, "2100-02-28T23:59:59Z"),
        ] {
            assert_eq!(Time(secs).to_string(), text);
            assert_eq!(Time::parse_rfc3339(text), Some(Time(secs)), "{text}");
        }
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-11-22 03:38:04Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(Time::parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn state_files_of_either_form_read() {
        let json = serde_json::to_string(&Time(1_795_318_684)).unwrap();
        assert_eq!(json, "\"2026-11-22T03:38:04Z\"");
        assert_eq!(
            serde_json::from_str::<Time>(&json).unwrap().0,
            1_795_318_684
        );
        assert_eq!(
            serde_json::from_str::<Time>("1795318684").unwrap().0,
            1_795_318_684
        );
    }
}
