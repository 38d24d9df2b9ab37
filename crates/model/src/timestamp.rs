//! The timestamp forms Docker's `until` and `since` take: a Go duration
//! before now (`10m`, `1h30m`), Unix seconds with an optional fraction,
//! RFC 3339 with a zone, and local-time dates and times.

use crate::Error;
use chrono::{DateTime, FixedOffset, Local, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};

/// A point in time, in nanoseconds since the Unix epoch.
pub type UnixNanos = i128;

/// Parses `value` as Docker's `GetTimestamp` does, durations counted back
/// from `now`. Returns nanoseconds since the epoch.
pub fn parse(value: &str, now: DateTime<Utc>) -> Result<UnixNanos, Error> {
    if value != "0"
        && let Some(duration) = parse_go_duration(value)
    {
        return Ok(nanos(now) - duration);
    }
    match parse_datetime(value) {
        Some(t) => Ok(t),
        None if value.contains('-') => Err(Error::InvalidArgument(format!(
            "parsing time {value:?}: not a valid RFC 3339 or date-time value"
        ))),
        None => parse_unix(value).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "failed to parse value as time or duration: {value:?}"
            ))
        }),
    }
}

/// The current time in nanoseconds since the epoch.
pub fn now_nanos() -> UnixNanos {
    nanos(Utc::now())
}

/// [`parse`] relative to the current time.
pub fn parse_now(value: &str) -> Result<UnixNanos, Error> {
    parse(value, Utc::now())
}

fn nanos<Tz: TimeZone>(t: DateTime<Tz>) -> UnixNanos {
    t.timestamp() as i128 * 1_000_000_000 + t.timestamp_subsec_nanos() as i128
}

/// `secs[.fraction]`, as the Docker CLI passes timestamps on.
fn parse_unix(value: &str) -> Option<UnixNanos> {
    let (secs, frac) = match value.split_once('.') {
        Some((s, f)) => (s, f),
        None => (value, ""),
    };
    let negative = secs.starts_with('-');
    let digits = secs.strip_prefix('-').unwrap_or(secs);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i128 = digits.parse().ok()?;
    let frac_nanos: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    let total = secs * 1_000_000_000 + frac_nanos;
    Some(if negative { -total } else { total })
}

/// RFC 3339 (zoned) or the local forms `YYYY-MM-DD[THH[:MM[:SS[.frac]]]]`,
/// with an optional zone (`Z` or `±hh:mm`) on each.
fn parse_datetime(value: &str) -> Option<UnixNanos> {
    let (naive_part, zone) = split_zone(value);
    let naive = parse_naive(naive_part)?;
    let t = match zone {
        Some(offset) => offset.from_local_datetime(&naive).single().map(nanos)?,
        None => Local.from_local_datetime(&naive).earliest().map(nanos)?,
    };
    Some(t)
}

fn split_zone(value: &str) -> (&str, Option<FixedOffset>) {
    if let Some(rest) = value.strip_suffix(['Z', 'z']) {
        return (rest, FixedOffset::east_opt(0));
    }
    // A ±hh:mm suffix after a date (which has two dashes of its own).
    if value.len() > 6 && value.matches('-').count() + value.matches('+').count() >= 3 {
        let (rest, zone) = value.split_at(value.len() - 6);
        let bytes = zone.as_bytes();
        if (bytes[0] == b'+' || bytes[0] == b'-') && bytes[3] == b':' {
            let hours: i32 = zone[1..3].parse().ok().unwrap_or(99);
            let minutes: i32 = zone[4..6].parse().ok().unwrap_or(99);
            if hours < 24 && minutes < 60 {
                let secs = (hours * 3600 + minutes * 60) * if bytes[0] == b'-' { -1 } else { 1 };
                return (rest, FixedOffset::east_opt(secs));
            }
        }
    }
    (value, None)
}

fn parse_naive(value: &str) -> Option<NaiveDateTime> {
    let (date, time) = match value.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (value, None),
    };
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let time = match time {
        None => NaiveTime::MIN,
        Some(t) => {
            let colons = t.matches(':').count();
            let padded = match colons {
                0 => format!("{t}:00:00"),
                1 => format!("{t}:00"),
                _ => t.to_string(),
            };
            NaiveTime::parse_from_str(&padded, "%H:%M:%S%.f").ok()?
        }
    };
    Some(date.and_time(time))
}

/// Go's `time.ParseDuration`: `[-+]` then one or more `<number><unit>`,
/// units ns, us, µs, ms, s, m, h. Returns nanoseconds.
pub fn parse_go_duration(value: &str) -> Option<i128> {
    let (negative, mut rest) = match value.as_bytes().first()? {
        b'-' => (true, &value[1..]),
        b'+' => (false, &value[1..]),
        _ => (false, value),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." {
            return None;
        }
        let number: f64 = number.parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    let total = total as i128;
    Some(if negative { -total } else { total })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 0).unwrap()
    }

    const S: i128 = 1_000_000_000;

    #[test]
    fn durations_count_back_from_now() {
        let base = nanos(now());
        assert_eq!(parse("10m", now()).unwrap(), base - 600 * S);
        assert_eq!(parse("1h30m", now()).unwrap(), base - 5400 * S);
        assert_eq!(parse("1.5h", now()).unwrap(), base - 5400 * S);
        assert_eq!(parse("-1h", now()).unwrap(), base + 3600 * S);
    }

    #[test]
    fn unix_seconds_with_fraction() {
        assert_eq!(parse("1700000000", now()).unwrap(), 1_700_000_000 * S);
        assert_eq!(
            parse("1700000000.5", now()).unwrap(),
            1_700_000_000 * S + S / 2
        );
        // "0" is a timestamp, not a duration.
        assert_eq!(parse("0", now()).unwrap(), 0);
    }

    #[test]
    fn rfc3339_and_zoned_forms() {
        let t = 1_700_000_000 * S; // 2023-11-14T22:13:20Z
        assert_eq!(parse("2023-11-14T22:13:20Z", now()).unwrap(), t);
        assert_eq!(parse("2023-11-14T22:13:20.25Z", now()).unwrap(), t + S / 4);
        assert_eq!(parse("2023-11-15T00:13:20+02:00", now()).unwrap(), t);
        assert_eq!(parse("2023-11-14T20:13:20-02:00", now()).unwrap(), t);
        assert_eq!(
            parse("2023-11-14T22Z", now()).unwrap(),
            t - 13 * 60 * S - 20 * S
        );
        assert_eq!(parse("2023-11-14T22:13Z", now()).unwrap(), t - 20 * S);
        assert_eq!(
            parse("2023-11-14Z", now()).unwrap(),
            t - (22 * 3600 + 13 * 60 + 20) * S
        );
    }

    #[test]
    fn local_forms_use_the_local_zone() {
        let local = Local
            .from_local_datetime(
                &NaiveDate::from_ymd_opt(2023, 11, 14)
                    .unwrap()
                    .and_hms_opt(22, 13, 20)
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(parse("2023-11-14T22:13:20", now()).unwrap(), nanos(local));
        let day = Local
            .from_local_datetime(
                &NaiveDate::from_ymd_opt(2023, 11, 14)
                    .unwrap()
                    .and_hms_opt(0, 0, 0)
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(parse("2023-11-14", now()).unwrap(), nanos(day));
    }

    #[test]
    fn garbage_is_refused_with_dockers_message() {
        assert_eq!(
            parse("yesterday", now()).unwrap_err().to_string(),
            "failed to parse value as time or duration: \"yesterday\""
        );
        assert!(
            parse("2023-13-01", now())
                .unwrap_err()
                .to_string()
                .contains("parsing time")
        );
        assert!(parse("10x", now()).is_err());
        assert!(parse("", now()).is_err());
    }
}
