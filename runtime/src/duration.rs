//! Human durations (`200ms`, `30s`, `5m`, `24h`, `1d`) as used in plans, serialized as the
//! same strings so a plan reads back exactly as submitted.

use crate::error::RuntimeError;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::time::Duration;

/// A duration written in a plan. Keeps the text so the plan round-trips byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanDuration {
    pub text: String,
    pub duration: Duration,
}

impl HumanDuration {
    pub fn parse(text: &str) -> Result<Self, RuntimeError> {
        let bad = || RuntimeError::Duration(text.to_string());
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let ms = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1_000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "d" => n.checked_mul(86_400_000),
            _ => None,
        }
        .ok_or_else(bad)?;
        Ok(Self {
            text: t.to_string(),
            duration: Duration::from_millis(ms),
        })
    }

    pub fn as_millis(&self) -> u64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_garbage() {
        assert_eq!(HumanDuration::parse("200ms").unwrap().as_millis(), 200);
        assert_eq!(HumanDuration::parse("30s").unwrap().as_millis(), 30_000);
        assert_eq!(HumanDuration::parse("24h").unwrap().as_millis(), 86_400_000);
        for bad in ["", "s", "10", "10 parsecs", "-1s", "99999999999999999999d"] {
            assert!(HumanDuration::parse(bad).is_err(), "{bad}");
        }
    }
}
