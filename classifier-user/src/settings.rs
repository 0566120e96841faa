//! What every section of the configuration shares: durations as the file spells them (`30s`,
//! `5m`) and the error a section gives for one of its keys.
//!
//! A leaf: it names no other module of the crate, so that the module owning a section can use
//! it while [`crate::config`] composes that section, without a cycle.

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A key of a section refused, named within its section (`interval`, not `health.interval`):
/// the configuration prefixes the section's name when it composes the sections.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {message}")]
pub struct Invalid {
    pub key: &'static str,
    pub message: String,
}

impl Invalid {
    #[must_use]
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

/// Refuses a duration outside `min..=max`, naming `key`.
pub fn within(
    key: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), Invalid> {
    if value < min || value > max {
        return Err(Invalid::new(
            key,
            format!(
                "{} is outside {}..={}",
                format_duration(value),
                format_duration(min),
                format_duration(max)
            ),
        ));
    }
    Ok(())
}

/// `250ms`, `30s`, `5m`, `1h`, `1d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 5m or 1h"))?;
    let scaled = |size: u64| {
        number
            .checked_mul(size)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{text:?} is too long a duration"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" | "" => scaled(1),
        "m" => scaled(60),
        "h" => scaled(3600),
        "d" => scaled(86400),
        _ => Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h, d)")),
    }
}

/// The shortest exact spelling of `duration` that [`parse_duration`] reads back.
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if !millis.is_multiple_of(1000) {
        return format!("{millis}ms");
    }
    let secs = duration.as_secs();
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60)] {
        if secs != 0 && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// `#[serde(with = "duration_text")]`: a duration as [`format_duration`] spells it.
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*duration))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        super::parse_duration(&String::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// A share of an address space as the file spells it (`4%`, `0.01%`), in parts per million:
/// exact, comparable, and at most four decimals of a percent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Share {
    pub ppm: u32,
}

impl Share {
    /// All of it.
    pub const ALL: Self = Self { ppm: 1_000_000 };

    /// Whether `part` of a space of `whole` addresses is more than this share of it.
    #[must_use]
    pub fn exceeded_by(self, part: u128, whole: u128) -> bool {
        // part / whole > ppm / 10^6, in integers: whole is a power of two up to 2^125, so
        // divide it first (exact) rather than multiply part.
        let limit = (whole / 1_000_000) * u128::from(self.ppm)
            + (whole % 1_000_000) * u128::from(self.ppm) / 1_000_000;
        part > limit
    }

    /// `part` of `whole` in percent, for messages.
    #[must_use]
    #[expect(clippy::cast_precision_loss, reason = "a percentage for a message")]
    pub fn percent_of(part: u128, whole: u128) -> f64 {
        part as f64 * 100.0 / whole as f64
    }
}

impl FromStr for Share {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a share like 4% or 0.01% (0% to 100%, 4 decimals)");
        let number = text.trim().strip_suffix('%').ok_or_else(bad)?;
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty()
            || fraction.len() > 4
            || !whole
                .bytes()
                .chain(fraction.bytes())
                .all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let whole: u32 = whole.parse().map_err(|_| bad())?;
        let fraction: u32 = format!("{fraction:0<4}").parse().map_err(|_| bad())?;
        let ppm = whole
            .checked_mul(10_000)
            .and_then(|ppm| ppm.checked_add(fraction))
            .filter(|ppm| *ppm <= 1_000_000)
            .ok_or_else(bad)?;
        Ok(Self { ppm })
    }
}

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, fraction) = (self.ppm / 10_000, self.ppm % 10_000);
        if fraction == 0 {
            write!(f, "{whole}%")
        } else {
            let fraction = format!("{fraction:04}");
            write!(f, "{whole}.{}%", fraction.trim_end_matches('0'))
        }
    }
}

impl Serialize for Share {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod share_tests {
    use super::Share;

    #[test]
    fn shares_read_and_write_as_percentages() {
        for (text, ppm) in [
            ("4%", 40_000),
            ("0.01%", 100),
            ("100%", 1_000_000),
            ("2.5%", 25_000),
        ] {
            let share: Share = text.parse().unwrap();
            assert_eq!(share.ppm, ppm, "{text}");
            assert_eq!(share.to_string(), text);
        }
        for bad in ["4", "-1%", "101%", "0.00001%", "%", "1e2%", " .5%"] {
            assert!(bad.parse::<Share>().is_err(), "{bad}");
        }
    }

    #[test]
    fn exceeded_compares_exactly() {
        let four: Share = "4%".parse().unwrap();
        let v4 = 1u128 << 32;
        // 4% of IPv4 is 171,798,691.84 addresses.
        assert!(!four.exceeded_by(171_798_691, v4));
        assert!(four.exceeded_by(171_798_692, v4));
        let v6 = 1u128 << 125;
        let tiny: Share = "0.01%".parse().unwrap();
        assert!(
            !tiny.exceeded_by(1 << 111, v6),
            "a /17 of global unicast is 0.006%"
        );
        assert!(tiny.exceeded_by(1 << 112, v6), "a /16 is 0.012%");
    }
}

/// `VALUE/MASK` for `skb->mark`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    pub value: u32,
    pub mask: u32,
}

impl fmt::Display for Mark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}/{:#x}", self.value, self.mask)
    }
}

impl FromStr for Mark {
    type Err = String;

    /// `0x365/0xffff`, `869/65535`, or `0x365` (mask 0xffffffff).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let number = |s: &str| {
            let s = s.trim();
            match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u32::from_str_radix(hex, 16),
                None => s.parse(),
            }
            .map_err(|_| format!("{s:?} is not a 32-bit number"))
        };
        let (value, mask) = match text.split_once('/') {
            Some((value, mask)) => (number(value)?, number(mask)?),
            None => (number(text)?, u32::MAX),
        };
        if mask == 0 {
            return Err("the mask is 0: no bit of the mark would be set".to_owned());
        }
        if value & !mask != 0 {
            return Err(format!("value {value:#x} has bits outside mask {mask:#x}"));
        }
        Ok(Self { value, mask })
    }
}

impl Serialize for Mark {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mark {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
