//! Human durations (`200ms`, `30s`, `5m`, `24h`, `1d`) as used in plans, serialized as the
//! same strings so a plan reads back exactly as submitted. Parsing never yields a duration
//! longer than [`MAX_DURATION_MS`] (100 years): absurd numbers are refused here, before they
//! can become a `Duration`; each plan field then has its own, tighter bounds (`plan`).

use crate::error::{shorten, RuntimeError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

pub const SECOND_MS: u64 = 1_000;
pub const MINUTE_MS: u64 = 60 * SECOND_MS;
pub const HOUR_MS: u64 = 60 * MINUTE_MS;
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// The longest duration [`HumanDuration::parse`] accepts: 100 years of 365 days.
pub const MAX_DURATION_MS: u64 = 36_500 * DAY_MS;
/// [`MAX_DURATION_MS`] as users write it.
pub const MAX_DURATION_TEXT: &str = "36500d (100 years)";

/// A duration written in a plan. Keeps the text so the plan round-trips byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanDuration {
    pub text: String,
    pub duration: Duration,
}

impl HumanDuration {
    pub fn parse(text: &str) -> Result<Self, RuntimeError> {
        let bad = || RuntimeError::Duration(shorten(text).into_owned());
        let too_long = || RuntimeError::DurationTooLong(shorten(text).into_owned());
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        let unit_ms = match unit {
            "ms" => 1,
            "s" => SECOND_MS,
            "m" => MINUTE_MS,
            "h" => HOUR_MS,
            "d" => DAY_MS,
            _ => return Err(bad()),
        };
        if num.is_empty() {
            return Err(bad());
        }
        // `num` is all ASCII digits, so the only way it fails to parse is overflow.
        let n: u64 = num.parse().map_err(|_| too_long())?;
        let ms = n
            .checked_mul(unit_ms)
            .filter(|ms| *ms <= MAX_DURATION_MS)
            .ok_or_else(too_long)?;
        Ok(Self {
            text: t.to_string(),
            duration: Duration::from_millis(ms),
        })
    }

    pub fn as_millis(&self) -> u64 {
        // Never truncates: parse caps the value at MAX_DURATION_MS.
        self.duration.as_millis() as u64
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// In a JSON Schema a duration is its text: a whole number and one unit.
impl schemars::JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9]+(ms|s|m|h|d)$",
            "description": "A whole number and a unit: ms, s, m, h or d (e.g. 200ms, 30s, 24h)."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_garbage() {
        assert_eq!(HumanDuration::parse("200ms").unwrap().as_millis(), 200);
        assert_eq!(HumanDuration::parse("30s").unwrap().as_millis(), 30_000);
        assert_eq!(HumanDuration::parse("5m").unwrap().as_millis(), 300_000);
        assert_eq!(HumanDuration::parse("24h").unwrap().as_millis(), 86_400_000);
        assert_eq!(HumanDuration::parse("1d").unwrap().as_millis(), 86_400_000);
        assert_eq!(HumanDuration::parse("0s").unwrap().as_millis(), 0);
        for bad in ["", "s", "10", "10 parsecs", "-1s", "1.5s", "1S", "ms"] {
            let e = HumanDuration::parse(bad).unwrap_err().to_string();
            assert!(e.contains("use a number with a unit"), "{bad}: {e}");
        }
    }

    #[test]
    fn absurd_lengths_are_refused_at_parse_time() {
        let max_days = MAX_DURATION_MS / DAY_MS;
        assert_eq!(
            HumanDuration::parse(&format!("{max_days}d"))
                .unwrap()
                .as_millis(),
            MAX_DURATION_MS
        );
        let cases = [
            format!("{}d", max_days + 1),
            format!("{}ms", MAX_DURATION_MS + 1),
            "18446744073709551615ms".to_string(),
            "18446744073709551615d".to_string(),
            "99999999999999999999d".to_string(),
            format!("{}s", "9".repeat(10_000)),
        ];
        for text in cases {
            let e = HumanDuration::parse(&text).unwrap_err().to_string();
            assert!(e.contains("longer than 36500d (100 years)"), "{e}");
            assert!(
                e.len() < 200,
                "message embeds the whole input: {} bytes",
                e.len()
            );
        }
    }

    #[test]
    fn text_round_trips_exactly() {
        for text in ["200ms", "0005s", "1d", "36500d"] {
            let d = HumanDuration::parse(text).unwrap();
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{text}\""));
        }
    }
}
