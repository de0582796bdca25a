//! Wall-clock timestamps for what mock-ens records (RFC 3339, UTC, milliseconds): when a
//! notification was recorded and since when a device is in its state, so that benchmarks can
//! measure delivery and blocking latencies from outside the process.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as `2026-11-25T14:15:27.703Z`.
pub fn now_rfc3339() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_unix_millis(since_epoch.as_millis() as u64)
}

/// Milliseconds since the Unix epoch as RFC 3339 UTC.
pub fn format_unix_millis(millis: u64) -> String {
    let seconds = millis / 1000;
    let days = seconds / 86_400;
    let rest = seconds % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        millis % 1000
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_civil_utc_with_milliseconds() {
        assert_eq!(format_unix_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_unix_millis(1_764_080_127_703),
            "2025-11-25T14:15:27.703Z"
        );
        assert_eq!(
            format_unix_millis(951_782_400_001),
            "2000-02-29T00:00:00.001Z"
        );
    }
}
