//! Instants with microsecond precision, written and read as RFC 3339.
//!
//! The UEM stand-in stamps every device change and filters delta-sync queries by these stamps;
//! its JSON carries them as RFC 3339 text (`2025-03-01T09:30:00.000000Z`).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// An instant, in microseconds since the Unix epoch (UTC).
///
/// Displays as RFC 3339 in UTC with six fractional digits, e.g. `2025-03-01T09:30:00.000000Z`.
///
/// ```
/// use seg_testbed::uem::Timestamp;
/// let t = Timestamp::parse_rfc3339("2025-03-01T10:30:00.5+01:00").unwrap();
/// assert_eq!(t.to_string(), "2025-03-01T09:30:00.500000Z");
/// assert!(Timestamp::parse_rfc3339("yesterday").is_none());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current time of the system clock.
    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => Self(i64::try_from(since.as_micros()).unwrap_or(i64::MAX)),
            Err(before) => Self(-i64::try_from(before.duration().as_micros()).unwrap_or(i64::MAX)),
        }
    }

    /// The instant `micros` microseconds after the Unix epoch (before it when negative).
    pub fn from_unix_micros(micros: i64) -> Self {
        Self(micros)
    }

    /// Microseconds since the Unix epoch.
    pub fn as_unix_micros(self) -> i64 {
        self.0
    }

    /// The instant `micros` microseconds later (earlier when negative), saturating.
    pub fn plus_micros(self, micros: i64) -> Self {
        Self(self.0.saturating_add(micros))
    }

    /// Parses an RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS`, an optional fraction (digits
    /// beyond microseconds are dropped), then `Z` or a `±HH:MM` offset. `t`, `z` and a space
    /// instead of `T` are accepted, as RFC 3339 allows. `None` for anything else.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let b = text.as_bytes();
        if b.len() < 20 {
            return None;
        }
        let year = digits(&b[0..4])?;
        let month = digits(&b[5..7])?;
        let day = digits(&b[8..10])?;
        let hour = digits(&b[11..13])?;
        let minute = digits(&b[14..16])?;
        let second = digits(&b[17..19])?;
        if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
            return None;
        }
        if b[13] != b':' || b[16] != b':' {
            return None;
        }
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
            return None;
        }
        // A leap second is read as the last second of its minute.
        if hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        let second = second.min(59);
        let mut rest = &b[19..];
        let mut micros = 0i64;
        if let Some((b'.', fraction)) = rest.split_first() {
            let count = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
            if count == 0 {
                return None;
            }
            for (i, digit) in fraction[..count].iter().enumerate() {
                if i < 6 {
                    micros = micros * 10 + i64::from(digit - b'0');
                }
            }
            for _ in count..6 {
                micros *= 10;
            }
            rest = &fraction[count..];
        }
        let offset_minutes = match rest {
            [b'Z' | b'z'] => 0,
            [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
                let hours = digits(&[*h1, *h2])?;
                let minutes = digits(&[*m1, *m2])?;
                if hours > 23 || minutes > 59 {
                    return None;
                }
                let offset = hours * 60 + minutes;
                if *sign == b'-' { -offset } else { offset }
            }
            _ => return None,
        };
        let days = days_from_civil(year, month, day);
        let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
        Some(Self(seconds * 1_000_000 + micros))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let days = seconds.div_euclid(86_400);
        let in_day = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            in_day / 3_600,
            in_day % 3_600 / 60,
            in_day % 60
        )
    }
}

fn digits(bytes: &[u8]) -> Option<i64> {
    bytes.iter().try_fold(0i64, |value, byte| {
        byte.is_ascii_digit()
            .then(|| value * 10 + i64::from(byte - b'0'))
    })
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_and_known_instants_round_trip() {
        assert_eq!(
            Timestamp::from_unix_micros(0).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        // 2024-02-29T12:34:56.789Z, a leap day.
        let t = Timestamp::from_unix_micros(1_709_210_096_789_000);
        assert_eq!(t.to_string(), "2024-02-29T12:34:56.789000Z");
        assert_eq!(Timestamp::parse_rfc3339(&t.to_string()), Some(t));
        let before_epoch = Timestamp::from_unix_micros(-1);
        assert_eq!(before_epoch.to_string(), "1969-12-31T23:59:59.999999Z");
        assert_eq!(
            Timestamp::parse_rfc3339("1969-12-31T23:59:59.999999Z"),
            Some(before_epoch)
        );
    }

    #[test]
    fn offsets_and_fractions_are_normalised_to_utc_microseconds() {
        let utc = Timestamp::parse_rfc3339("2025-01-01T00:00:00Z").unwrap();
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-01T02:00:00+02:00"),
            Some(utc)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2024-12-31t19:00:00-05:00"),
            Some(utc)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-01 00:00:00.123456789z"),
            Some(utc.plus_micros(123_456))
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2025-01-01T00:00:00.1Z"),
            Some(utc.plus_micros(100_000))
        );
    }

    #[test]
    fn malformed_or_impossible_dates_are_refused() {
        for bad in [
            "",
            "2025-01-01",
            "2025-01-01T00:00:00",
            "2025-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-01-01T24:00:00Z",
            "2025-01-01T00:00:00.Z",
            "2025-01-01T00:00:00+0200",
            "2025-01-01T00:00:00Zjunk",
            "2025-01-01X00:00:00Z",
            "２０２５-01-01T00:00:00Z",
        ] {
            assert_eq!(Timestamp::parse_rfc3339(bad), None, "{bad:?}");
        }
    }
}
