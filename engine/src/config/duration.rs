//! Durations as operators write them: "30s", "500ms", "2m", "1h", "1d", or a bare number of seconds.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn get(self) -> Duration {
        self.0
    }
}

/// Parse "30s", "500ms", "2m", "1h", "1.5s" or a bare number of seconds.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().map_err(|_| format!("`{s}` is not a duration (examples: 30s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return Err(format!("`{s}` has an unknown unit (use ms, s, m, h or d)")),
    };
    // Nothing in a cluster config needs more than a week; bigger values are typos (and would
    // overflow clock arithmetic).
    if !secs.is_finite() || !(0.0..=7.0 * 86_400.0).contains(&secs) {
        return Err(format!("`{s}` is not a valid duration (0 to 7 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => parse(&s).map(HumanDuration).map_err(serde::de::Error::custom),
            Raw::Secs(n) if n <= 7 * 86_400 => Ok(HumanDuration(Duration::from_secs(n))),
            Raw::Secs(n) => Err(serde::de::Error::custom(format!("{n} seconds is not a valid duration (0 to 7 days)"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_humane_durations() {
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("5"), Ok(Duration::from_secs(5)));
        assert!(parse("5 parsecs").is_err());
        assert!(parse("soon").is_err());
        assert!(parse("99999999999999999999").is_err());
        assert!(parse("8d").is_err());
    }
}
