//! When a validated cron expression fires next, in a time zone — what `status` shows so a
//! schedule in local time can be checked by eye ("02:00 in Singapore is 18:00 UTC").
//!
//! Daylight saving follows EventBridge Scheduler's documented behaviour: a local time that
//! does not exist (clocks jump forward over it) is skipped that day, and a local time that
//! happens twice (clocks fall back) runs once, at its first occurrence.
//! <https://docs.aws.amazon.com/scheduler/latest/UserGuide/schedule-types.html#daylight-saving-time>

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, TimeZone, Utc, Weekday};

use super::{CronExpr, ScheduleExpr, DAYS, MONTHS};

/// The next `n` run times strictly after `after`. Rate expressions count from the moment the
/// schedule was created, which the expression does not say: none are computed for them.
pub fn next_runs<Z: TimeZone>(
    expr: &ScheduleExpr,
    zone: &Z,
    after: DateTime<Utc>,
    n: usize,
) -> Vec<DateTime<Z>> {
    match expr {
        ScheduleExpr::Cron(c) => c.next_runs(zone, after, n),
        ScheduleExpr::Rate { .. } => Vec::new(),
    }
}

/// How far ahead [`longest_gap`] looks: four years and a day, so that a schedule that runs
/// once a year (or on 29 February) still shows at least two runs.
const GAP_HORIZON_DAYS: i64 = 4 * 366 + 1;
/// Runs [`longest_gap`] looks at before it stops early: every-minute schedules reach it within
/// months, and their gaps repeat long before.
const GAP_MAX_RUNS: usize = 200_000;

/// The longest time between two consecutive runs after `after`: how long a stage may go
/// without a backup when every run happens. `None` when the schedule runs fewer than twice in
/// the next four years. The first run counts from `after`'s next run, not from `after` (a
/// schedule created just after its daily run is not a day late).
pub fn longest_gap<Z: TimeZone>(
    expr: &ScheduleExpr,
    zone: &Z,
    after: DateTime<Utc>,
) -> Option<chrono::Duration> {
    let c = match expr {
        ScheduleExpr::Rate { value, unit } => {
            let secs = i64::from(*value)
                * match unit {
                    super::RateUnit::Minutes => 60,
                    super::RateUnit::Hours => 3_600,
                    super::RateUnit::Days => 86_400,
                };
            return Some(chrono::Duration::seconds(secs));
        }
        ScheduleExpr::Cron(c) => c,
    };
    let end = after + chrono::Duration::days(GAP_HORIZON_DAYS);
    let (mut prev, mut seen, mut longest) = (None::<DateTime<Utc>>, 0usize, None);
    let mut from = after;
    while seen < GAP_MAX_RUNS && from < end {
        let chunk = c.next_runs(zone, from, 4_096);
        let Some(last) = chunk.last() else { break };
        from = last.with_timezone(&Utc);
        for t in chunk {
            let t = t.with_timezone(&Utc);
            if t > end {
                break;
            }
            if let Some(p) = prev {
                let gap = t - p;
                longest = Some(longest.map_or(gap, |l: chrono::Duration| l.max(gap)));
            }
            prev = Some(t);
            seen += 1;
        }
    }
    longest
}

impl CronExpr {
    pub fn next_runs<Z: TimeZone>(
        &self,
        zone: &Z,
        after: DateTime<Utc>,
        n: usize,
    ) -> Vec<DateTime<Z>> {
        let f = &self.fields;
        let minutes = values(&f[0], 0, 59, &[]);
        let hours = values(&f[1], 0, 23, &[]);
        let months = values(&f[3], 1, 12, &MONTHS);
        let years = values(&f[5], 1970, 2199, &[]);
        let mut out = Vec::new();
        let mut day = after.with_timezone(zone).date_naive();
        while out.len() < n && day.year() <= 2199 {
            let (y, m) = (day.year(), day.month());
            if y < 1970 || !years[y as usize] {
                day = first_of(y + 1, 1);
                continue;
            }
            if !months[m as usize] {
                day = next_month(day);
                continue;
            }
            if self.day_matches(day) {
                for h in (0..24).filter(|h| hours[*h as usize]) {
                    for mi in (0..60).filter(|mi| minutes[*mi as usize]) {
                        let local = day.and_hms_opt(h, mi, 0).expect("valid time");
                        let t = match zone.from_local_datetime(&local) {
                            LocalResult::Single(t) => t,
                            LocalResult::Ambiguous(first, _) => first,
                            LocalResult::None => continue,
                        };
                        if t.with_timezone(&Utc) > after {
                            out.push(t);
                            if out.len() == n {
                                return out;
                            }
                        }
                    }
                }
            }
            match day.succ_opt() {
                Some(d) => day = d,
                None => break,
            }
        }
        out
    }

    fn day_matches(&self, day: NaiveDate) -> bool {
        let (dom, dow) = (&self.fields[2], &self.fields[4]);
        if dom == "?" {
            dow_matches(dow, day)
        } else {
            dom_matches(dom, day)
        }
    }
}

fn first_of(year: i32, month: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, 1).unwrap_or(NaiveDate::MAX)
}

fn next_month(d: NaiveDate) -> NaiveDate {
    if d.month() == 12 {
        first_of(d.year() + 1, 1)
    } else {
        first_of(d.year(), d.month() + 1)
    }
}

fn days_in_month(d: NaiveDate) -> u32 {
    next_month(d.with_day(1).expect("day 1"))
        .pred_opt()
        .expect("a day before")
        .day()
}

fn is_weekday(d: NaiveDate) -> bool {
    !matches!(d.weekday(), Weekday::Sat | Weekday::Sun)
}

/// The weekday nearest to day `n` of `d`'s month, never leaving the month (Quartz's `nW`).
fn nearest_weekday(d: NaiveDate, n: u32) -> Option<u32> {
    let last = days_in_month(d);
    if n > last {
        return None;
    }
    let target = d.with_day(n)?;
    Some(match target.weekday() {
        Weekday::Sat if n == 1 => 3,
        Weekday::Sat => n - 1,
        Weekday::Sun if n == last => n - 2,
        Weekday::Sun => n + 1,
        _ => n,
    })
}

fn dom_matches(text: &str, d: NaiveDate) -> bool {
    let last = days_in_month(d);
    match text {
        "*" => true,
        "L" => d.day() == last,
        "LW" => {
            (1..=last)
                .rev()
                .find(|n| d.with_day(*n).is_some_and(is_weekday))
                == Some(d.day())
        }
        t if t.ends_with('W') => {
            t[..t.len() - 1]
                .parse()
                .ok()
                .and_then(|n| nearest_weekday(d, n))
                == Some(d.day())
        }
        t => values(t, 1, 31, &[])[d.day() as usize],
    }
}

/// EventBridge numbers days 1 (SUN) to 7 (SAT).
fn dow_matches(text: &str, d: NaiveDate) -> bool {
    let today = d.weekday().num_days_from_sunday() + 1;
    let day_value = |s: &str| value(s, &DAYS);
    match text {
        "*" => true,
        "L" => today == 7,
        t if t.contains('#') => {
            let (day, nth) = t.split_once('#').expect("has #");
            day_value(day) == Some(today) && nth.parse::<u32>().ok() == Some((d.day() - 1) / 7 + 1)
        }
        t if t.ends_with('L') => {
            day_value(&t[..t.len() - 1]) == Some(today) && d.day() + 7 > days_in_month(d)
        }
        t => values(t, 1, 7, &DAYS)[today as usize],
    }
}

fn value(text: &str, names: &[&str]) -> Option<u32> {
    names
        .iter()
        .position(|n| *n == text)
        .map(|p| p as u32 + 1)
        .or_else(|| text.parse().ok())
}

/// Which values a field (validated by `parse`) allows, indexed by value.
fn values(text: &str, lo: u32, hi: u32, names: &[&str]) -> Vec<bool> {
    let mut set = vec![false; hi as usize + 1];
    for item in text.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((b, s)) => (b, s.parse::<u32>().unwrap_or(1).max(1)),
            None => (item, 1),
        };
        let (from, to) = match base {
            "*" | "?" => (lo, hi),
            b => match b.split_once('-') {
                Some((a, z)) => (value(a, names).unwrap_or(lo), value(z, names).unwrap_or(hi)),
                None => {
                    let v = value(b, names).unwrap_or(lo);
                    (v, if item.contains('/') { hi } else { v })
                }
            },
        };
        let mut v = from;
        while v <= to.min(hi) {
            set[v as usize] = true;
            v += step;
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(expr: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
        let expr = super::super::parse(expr).unwrap();
        let after: DateTime<Utc> = after.parse().unwrap();
        let tz: chrono_tz::Tz = zone.parse().unwrap();
        next_runs(&expr, &tz, after, n)
            .iter()
            .map(|t| t.to_rfc3339())
            .collect()
    }

    #[test]
    fn longest_gaps() {
        let gap = |expr: &str, zone: &str| {
            let tz: chrono_tz::Tz = zone.parse().unwrap();
            let after: DateTime<Utc> = "2026-12-03T13:00:00Z".parse().unwrap();
            longest_gap(&super::super::parse(expr).unwrap(), &tz, after).map(|d| d.num_minutes())
        };
        assert_eq!(gap("rate(6 hours)", "UTC"), Some(360));
        assert_eq!(gap("rate(1 day)", "UTC"), Some(1_440));
        assert_eq!(gap("cron(0 3 * * ? *)", "UTC"), Some(1_440));
        // Weekdays only: Friday to Monday.
        assert_eq!(gap("cron(0 3 ? * MON-FRI *)", "UTC"), Some(3 * 1_440));
        // Twice a day, unevenly: the longer side counts.
        assert_eq!(gap("cron(0 3,9 * * ? *)", "UTC"), Some(18 * 60));
        // Berlin falls back on 2027-10-31: that day is 25 hours long.
        assert_eq!(gap("cron(0 3 * * ? *)", "Europe/Berlin"), Some(1_500));
        // Once a month: the longest month.
        assert_eq!(gap("cron(0 3 1 * ? *)", "UTC"), Some(31 * 1_440));
        // Every minute stops early and is still right.
        assert_eq!(gap("cron(* * * * ? *)", "UTC"), Some(1));
        // A schedule that runs once, then never again.
        assert_eq!(gap("cron(0 3 1 1 ? 2027)", "UTC"), None);
    }

    #[test]
    fn next_runs_table() {
        let table: &[(&str, &str, &str, &[&str])] = &[
            // 02:00 in Singapore is 18:00 UTC the day before.
            (
                "cron(0 2 * * ? *)",
                "Asia/Singapore",
                "2026-12-03T13:00:00Z",
                &[
                    "2026-12-04T02:00:00+08:00",
                    "2026-12-05T02:00:00+08:00",
                    "2026-12-06T02:00:00+08:00",
                ],
            ),
            // Berlin springs forward on 2026-03-29 (02:00 -> 03:00): 02:30 does not exist
            // that day and is skipped; the offset changes from +01:00 to +02:00.
            (
                "cron(30 2 * * ? *)",
                "Europe/Berlin",
                "2026-03-27T12:00:00Z",
                &[
                    "2026-03-28T02:30:00+01:00",
                    "2026-03-30T02:30:00+02:00",
                    "2026-03-31T02:30:00+02:00",
                ],
            ),
            // Berlin falls back on 2026-10-25 (03:00 -> 02:00): 02:30 happens twice and runs
            // once, at the first.
            (
                "cron(30 2 * * ? *)",
                "Europe/Berlin",
                "2026-10-24T12:00:00Z",
                &[
                    "2026-10-25T02:30:00+02:00",
                    "2026-10-26T02:30:00+01:00",
                    "2026-10-27T02:30:00+01:00",
                ],
            ),
            // Local 03:00 keeps its wall-clock time across the change (UTC moves).
            (
                "cron(0 3 * * ? *)",
                "Europe/Berlin",
                "2026-03-28T01:00:00Z",
                &["2026-03-28T03:00:00+01:00", "2026-03-29T03:00:00+02:00"],
            ),
            (
                "cron(0 9 ? * MON-FRI *)",
                "UTC",
                "2026-12-04T10:00:00Z", // a Friday, after 09:00
                &["2026-12-07T09:00:00+00:00", "2026-12-08T09:00:00+00:00"],
            ),
            (
                "cron(0/20 1 * * ? *)",
                "UTC",
                "2026-12-04T01:10:00Z",
                &[
                    "2026-12-04T01:20:00+00:00",
                    "2026-12-04T01:40:00+00:00",
                    "2026-12-05T01:00:00+00:00",
                ],
            ),
            (
                "cron(0 23 L * ? *)",
                "UTC",
                "2027-02-01T00:00:00Z",
                &["2027-02-28T23:00:00+00:00", "2027-03-31T23:00:00+00:00"],
            ),
            // Last weekday: 2027-01-31 is a Sunday.
            (
                "cron(0 9 LW * ? *)",
                "UTC",
                "2027-01-01T00:00:00Z",
                &["2027-01-29T09:00:00+00:00"],
            ),
            // Nearest weekday to the 1st, 2028-01-01 being a Saturday: Monday the 3rd.
            (
                "cron(0 9 1W * ? *)",
                "UTC",
                "2027-12-15T00:00:00Z",
                &["2028-01-03T09:00:00+00:00"],
            ),
            // First Monday; last Friday (6L).
            (
                "cron(0 9 ? * 2#1 *)",
                "UTC",
                "2026-12-01T00:00:00Z",
                &["2026-12-07T09:00:00+00:00", "2027-01-04T09:00:00+00:00"],
            ),
            (
                "cron(15 10 ? * 6L *)",
                "UTC",
                "2026-12-01T00:00:00Z",
                &["2026-12-25T10:15:00+00:00", "2027-01-29T10:15:00+00:00"],
            ),
            (
                "cron(0 3 1 JAN,JUL ? 2027-2028)",
                "UTC",
                "2026-12-01T00:00:00Z",
                &[
                    "2027-01-01T03:00:00+00:00",
                    "2027-07-01T03:00:00+00:00",
                    "2028-01-01T03:00:00+00:00",
                ],
            ),
            // Past its last year: never again.
            ("cron(0 3 * * ? 2020)", "UTC", "2026-12-01T00:00:00Z", &[]),
            ("rate(1 day)", "UTC", "2026-12-01T00:00:00Z", &[]),
        ];
        for (expr, zone, after, want) in table {
            assert_eq!(
                runs(expr, zone, after, want.len().max(1)),
                *want,
                "{expr} in {zone} after {after}"
            );
        }
    }
}
