//! Times as the UI shows and reads them: the store's milliseconds since the Unix epoch,
//! always in UTC (`2026-12-05 14:03:07.412`), and the `datetime-local` values of the jobs
//! list's time filter, read as UTC. No time zone database: the conversions are the civil
//! calendar arithmetic of Howard Hinnant's `days_from_civil`, exact for every year 0-9999.

/// `YYYY-MM-DD HH:MM:SS.mmm` (UTC) of `ms`.
pub fn format_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// A duration in ms as a person reads it: `412 ms`, `3.2 s`, `4 min 12 s`, `2 h 5 min`.
pub fn format_duration(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{} h {} min", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// Reads `YYYY-MM-DDTHH:MM` or `YYYY-MM-DDTHH:MM:SS` (an HTML `datetime-local` value, or
/// with a space for the `T`) as UTC milliseconds.
pub fn parse_datetime_local(s: &str) -> Option<i64> {
    let s = s.trim();
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-');
    let y: i64 = num(d.next()?, 4)?;
    let m: i64 = num(d.next()?, 2)?;
    let day: i64 = num(d.next()?, 2)?;
    let mut t = time.splitn(3, ':');
    let hh: i64 = num(t.next()?, 2)?;
    let mm: i64 = num(t.next()?, 2)?;
    let ss: i64 = match t.next() {
        Some(v) => num(v, 2)?,
        None => 0,
    };
    let valid = (1..=12).contains(&m)
        && (1..=days_in_month(y, m)).contains(&day)
        && hh < 24
        && mm < 60
        && ss < 60;
    valid.then(|| ((days_from_civil(y, m, day) * 24 + hh) * 60 + mm) * 60_000 + ss * 1000)
}

/// The same `datetime-local` text for `ms` (minutes precision), to refill a form.
pub fn to_datetime_local(ms: i64) -> String {
    let f = format_ms(ms);
    format!("{}T{}", &f[..10], &f[11..16])
}

fn num(s: &str, width: usize) -> Option<i64> {
    (s.len() == width && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_utc() {
        assert_eq!(format_ms(0), "1970-01-01 00:00:00.000");
        assert_eq!(format_ms(1_700_000_000_123), "2023-11-14 22:13:20.123");
        assert_eq!(
            parse_datetime_local("2023-11-14T22:13"),
            Some(1_700_000_000_000 - 20_000)
        );
        assert_eq!(
            parse_datetime_local("2024-02-29T00:00:01"),
            Some(1_709_164_801_000)
        );
        assert_eq!(to_datetime_local(1_700_000_000_123), "2023-11-14T22:13");
        for bad in [
            "",
            "2023-13-01T00:00",
            "2023-02-29T00:00",
            "2023-1-01T00:00",
            "x",
        ] {
            assert_eq!(parse_datetime_local(bad), None, "{bad}");
        }
        assert_eq!(format_duration(412), "412 ms");
        assert_eq!(format_duration(3_210), "3.2 s");
        assert_eq!(format_duration(252_000), "4 min 12 s");
    }
}
