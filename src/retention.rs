//! Grandfather-father-son retention, with restic's `forget` semantics.
//!
//! Why restic's rules: users of backup tools already know them, so
//! `--keep-daily 7 --keep-weekly 4` does here exactly what it does there.
//! Items are walked newest to oldest; `keep_last` keeps the N newest, and each
//! period rule keeps the newest item of each distinct period until it has
//! kept N periods. An item kept by several rules carries every reason.
//!
//! Two deliberate additions, both to make pruning unable to destroy the only
//! good copy:
//! - Failed (`ok == false`) items never satisfy a rule, so a run of failures
//!   cannot push good backups out of their buckets. Failures newer than the
//!   newest good backup are kept (they may still be in flight or worth
//!   inspecting); older failures are deleted.
//! - The newest good backup is always kept, whatever the policy says. Only an item whose
//!   bytes can be checked (`checked`: it has a readable manifest) counts as that newest good
//!   backup: an unverifiable one still satisfies the rules, but can never push the newest
//!   checkable backup out.
//!
//! Unlike restic 0.14+, the oldest item is not additionally kept when a rule
//! still has unused periods: that extension makes a second run over the kept
//! set keep a different item, which would break idempotence.

use std::fmt;

use chrono::{DateTime, Datelike, FixedOffset, Timelike};
use chrono_tz::Tz;
use serde::Serialize;

pub const REASON_LAST: &str = "last";
pub const REASON_HOURLY: &str = "hourly";
pub const REASON_DAILY: &str = "daily";
pub const REASON_WEEKLY: &str = "weekly";
pub const REASON_MONTHLY: &str = "monthly";
pub const REASON_YEARLY: &str = "yearly";
pub const REASON_NEWEST_OK: &str = "newest successful";
pub const REASON_NEWER_THAN_OK: &str = "newer than newest successful";

/// How many of each period to keep. Zero means the rule is off, matching
/// restic, where an unset `--keep-*` flag keeps nothing for that period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
}

impl Policy {
    /// A policy with no rule would delete everything but the newest good
    /// backup; [`apply`] refuses it rather than guessing what the user meant.
    pub fn is_empty(&self) -> bool {
        self.rules().iter().all(|(n, _)| *n == 0)
    }

    /// The most items the rules themselves can keep, excluding the safety
    /// nets. `u64` so that six `u32::MAX` rules cannot overflow.
    #[cfg(test)]
    pub fn max_kept(&self) -> u64 {
        self.rules().iter().map(|(n, _)| u64::from(*n)).sum()
    }

    fn rules(&self) -> [(u32, Period); 6] {
        [
            (self.keep_last, Period::Last),
            (self.keep_hourly, Period::Hour),
            (self.keep_daily, Period::Day),
            (self.keep_weekly, Period::Week),
            (self.keep_monthly, Period::Month),
            (self.keep_yearly, Period::Year),
        ]
    }
}

/// Renders the policy as the CLI flags that would produce it, so logs and
/// dry-run output can echo the rule in the user's own vocabulary.
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (n, period) in self.rules() {
            if n > 0 {
                if !first {
                    f.write_str(" ")?;
                }
                write!(f, "--keep-{} {n}", period.flag())?;
                first = false;
            }
        }
        if first {
            f.write_str("(no keep rule)")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<Id> {
    pub id: Id,
    pub time: DateTime<FixedOffset>,
    /// `false` for a backup known to have failed or to be unverified-bad.
    pub ok: bool,
    /// Its bytes can be checked (it has a manifest): only such an item can be the newest
    /// good backup the safety net keeps.
    pub checked: bool,
}

/// One verdict per input item. `time` is carried so callers can render the
/// plan without looking the item up again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision<Id> {
    pub id: Id,
    pub time: DateTime<FixedOffset>,
    pub keep: bool,
    /// Empty exactly when `keep` is false.
    pub reasons: Vec<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    #[error("refusing to prune with no keep rule: pass at least one --keep-* option")]
    NoKeepRule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Last,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

/// A bucket identity. Fields that a period does not use stay zero, so one
/// type serves every period and compares cheaply.
type Bucket = (i32, u32, u32, u32);

impl Period {
    fn reason(self) -> &'static str {
        match self {
            Period::Last => REASON_LAST,
            Period::Hour => REASON_HOURLY,
            Period::Day => REASON_DAILY,
            Period::Week => REASON_WEEKLY,
            Period::Month => REASON_MONTHLY,
            Period::Year => REASON_YEARLY,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Period::Last => "last",
            Period::Hour => "hourly",
            Period::Day => "daily",
            Period::Week => "weekly",
            Period::Month => "monthly",
            Period::Year => "yearly",
        }
    }

    /// `Last` has no calendar bucket: every item is its own, which the
    /// caller expresses by passing the item's position as `seq`.
    fn bucket(self, t: &DateTime<Tz>, seq: usize) -> Bucket {
        match self {
            Period::Last => (0, 0, 0, seq as u32),
            Period::Hour => (t.year(), t.month(), t.day(), t.hour()),
            Period::Day => (t.year(), t.month(), t.day(), 0),
            // ISO weeks: Monday-based, and the ISO year differs from the
            // calendar year around New Year (2024-12-30 is 2025-W01).
            Period::Week => {
                let w = t.iso_week();
                (w.year(), w.week(), 0, 0)
            }
            Period::Month => (t.year(), t.month(), 0, 0),
            Period::Year => (t.year(), 0, 0, 0),
        }
    }
}

/// Decides which items to keep.
///
/// Periods are computed in `tz` because "daily" means the user's days: a
/// backup at 23:00 and one at 01:00 local are two days even when they fall on
/// one UTC date. Output is sorted newest first; items with identical
/// timestamps stay in input order (stable sort), so the result never depends
/// on anything but the input.
pub fn apply<Id: Clone>(
    items: &[Item<Id>],
    policy: &Policy,
    tz: &Tz,
) -> Result<Vec<Decision<Id>>, RetentionError> {
    if policy.is_empty() {
        return Err(RetentionError::NoKeepRule);
    }

    let mut order: Vec<&Item<Id>> = items.iter().collect();
    order.sort_by_key(|it| std::cmp::Reverse(it.time));
    let newest_ok = order.iter().position(|it| it.ok && it.checked);

    struct RuleState {
        period: Period,
        remaining: u32,
        last: Option<Bucket>,
    }
    let mut rules: Vec<RuleState> = policy
        .rules()
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(remaining, period)| RuleState {
            period,
            remaining,
            last: None,
        })
        .collect();

    let mut decisions = Vec::with_capacity(order.len());
    let mut ok_seq = 0usize;
    for (pos, item) in order.into_iter().enumerate() {
        let mut reasons = Vec::new();
        if item.ok {
            let local = item.time.with_timezone(tz);
            for rule in rules.iter_mut().filter(|r| r.remaining > 0) {
                let bucket = rule.period.bucket(&local, ok_seq);
                if rule.last != Some(bucket) {
                    rule.last = Some(bucket);
                    rule.remaining -= 1;
                    reasons.push(rule.period.reason());
                }
            }
            ok_seq += 1;
            if Some(pos) == newest_ok {
                reasons.push(REASON_NEWEST_OK);
            }
        } else if newest_ok.is_none_or(|newest| pos < newest) {
            reasons.push(REASON_NEWER_THAN_OK);
        }
        decisions.push(Decision {
            id: item.id.clone(),
            time: item.time,
            keep: !reasons.is_empty(),
            reasons,
        });
    }
    Ok(decisions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<FixedOffset> {
        DateTime::parse_from_rfc3339(s).unwrap()
    }

    fn item(id: &'static str, time: &str, ok: bool) -> Item<&'static str> {
        Item {
            id,
            time: t(time),
            ok,
            checked: true,
        }
    }

    fn kept(decisions: &[Decision<&'static str>]) -> Vec<(&'static str, String)> {
        decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| (d.id, d.reasons.join(",")))
            .collect()
    }

    fn utc() -> Tz {
        chrono_tz::UTC
    }

    #[test]
    fn empty_policy_is_refused() {
        let err = apply(
            &[item("a", "2025-01-01T00:00:00Z", true)],
            &Policy::default(),
            &utc(),
        )
        .unwrap_err();
        assert_eq!(err, RetentionError::NoKeepRule);
        assert_eq!(
            err.to_string(),
            "refusing to prune with no keep rule: pass at least one --keep-* option"
        );
        // Refused even when there is nothing to prune: the flag mistake is
        // the same.
        let none: &[Item<u32>] = &[];
        assert!(apply(none, &Policy::default(), &utc()).is_err());
    }

    #[test]
    fn policy_helpers() {
        let p = Policy {
            keep_daily: 7,
            keep_weekly: 4,
            ..Policy::default()
        };
        assert!(!p.is_empty());
        assert!(Policy::default().is_empty());
        assert_eq!(p.max_kept(), 11);
        assert_eq!(p.to_string(), "--keep-daily 7 --keep-weekly 4");
        assert_eq!(Policy::default().to_string(), "(no keep rule)");
        let all = Policy {
            keep_last: u32::MAX,
            keep_hourly: u32::MAX,
            keep_daily: u32::MAX,
            keep_weekly: u32::MAX,
            keep_monthly: u32::MAX,
            keep_yearly: u32::MAX,
        };
        assert_eq!(all.max_kept(), 6 * u64::from(u32::MAX));
    }

    #[test]
    fn no_items_gives_no_decisions() {
        let none: &[Item<u32>] = &[];
        let p = Policy {
            keep_last: 1,
            ..Policy::default()
        };
        assert_eq!(apply(none, &p, &utc()).unwrap(), vec![]);
    }

    struct Case {
        name: &'static str,
        items: Vec<Item<&'static str>>,
        policy: Policy,
        /// Kept ids newest first, with comma-joined reasons.
        want: Vec<(&'static str, &'static str)>,
    }

    fn cases() -> Vec<Case> {
        let last = |n| Policy {
            keep_last: n,
            ..Policy::default()
        };
        let daily = |n| Policy {
            keep_daily: n,
            ..Policy::default()
        };
        vec![
            Case {
                name: "keep_last keeps the N newest, regardless of input order",
                items: vec![
                    item("b", "2025-01-02T00:00:00Z", true),
                    item("d", "2025-01-04T00:00:00Z", true),
                    item("a", "2025-01-01T00:00:00Z", true),
                    item("c", "2025-01-03T00:00:00Z", true),
                ],
                policy: last(2),
                want: vec![("d", "last,newest successful"), ("c", "last")],
            },
            Case {
                name: "keep_last larger than the item count keeps everything",
                items: vec![
                    item("a", "2025-01-01T00:00:00Z", true),
                    item("b", "2025-01-02T00:00:00Z", true),
                ],
                policy: last(10),
                want: vec![("b", "last,newest successful"), ("a", "last")],
            },
            Case {
                name: "daily keeps the newest of each day",
                items: vec![
                    item("d1-early", "2025-01-01T01:00:00Z", true),
                    item("d1-late", "2025-01-01T23:00:00Z", true),
                    item("d2-early", "2025-01-02T01:00:00Z", true),
                    item("d2-late", "2025-01-02T13:00:00Z", true),
                    item("d3", "2025-01-03T05:00:00Z", true),
                ],
                policy: daily(2),
                want: vec![("d3", "daily,newest successful"), ("d2-late", "daily")],
            },
            Case {
                name: "days without backups do not count towards the daily limit",
                items: vec![
                    item("jan01", "2025-01-01T12:00:00Z", true),
                    item("jan10", "2025-01-10T12:00:00Z", true),
                    item("feb01", "2025-02-01T12:00:00Z", true),
                ],
                policy: daily(3),
                want: vec![
                    ("feb01", "daily,newest successful"),
                    ("jan10", "daily"),
                    ("jan01", "daily"),
                ],
            },
            Case {
                name: "one item may carry several reasons",
                items: vec![
                    item("old", "2024-06-01T00:00:00Z", true),
                    item("new", "2025-03-01T00:00:00Z", true),
                ],
                policy: Policy {
                    keep_last: 1,
                    keep_daily: 1,
                    keep_monthly: 2,
                    keep_yearly: 5,
                    ..Policy::default()
                },
                want: vec![
                    ("new", "last,daily,monthly,yearly,newest successful"),
                    ("old", "monthly,yearly"),
                ],
            },
            Case {
                name: "ISO weeks run Monday to Sunday",
                items: vec![
                    item("sat", "2025-01-04T12:00:00Z", true),
                    item("sun", "2025-01-05T12:00:00Z", true),
                    item("mon", "2025-01-06T12:00:00Z", true),
                ],
                policy: Policy {
                    keep_weekly: 5,
                    ..Policy::default()
                },
                want: vec![("mon", "weekly,newest successful"), ("sun", "weekly")],
            },
            Case {
                name: "ISO week 2025-W01 starts on 2024-12-30",
                items: vec![
                    item("2024-12-29", "2024-12-29T12:00:00Z", true),
                    item("2024-12-30", "2024-12-30T12:00:00Z", true),
                    item("2025-01-01", "2025-01-01T12:00:00Z", true),
                ],
                policy: Policy {
                    keep_weekly: 5,
                    ..Policy::default()
                },
                want: vec![
                    ("2025-01-01", "weekly,newest successful"),
                    ("2024-12-29", "weekly"),
                ],
            },
            Case {
                name: "hourly and yearly buckets",
                items: vec![
                    item("2023", "2023-12-31T23:59:59Z", true),
                    item("h10a", "2025-05-05T10:05:00Z", true),
                    item("h10b", "2025-05-05T10:55:00Z", true),
                    item("h11", "2025-05-05T11:00:00Z", true),
                ],
                policy: Policy {
                    keep_hourly: 2,
                    keep_yearly: 3,
                    ..Policy::default()
                },
                want: vec![
                    ("h11", "hourly,yearly,newest successful"),
                    ("h10b", "hourly"),
                    ("2023", "yearly"),
                ],
            },
            Case {
                name: "failures never fill a bucket; newer failures kept, older deleted",
                items: vec![
                    item("fail-new", "2025-01-03T12:00:00Z", false),
                    item("ok-d3", "2025-01-03T06:00:00Z", true),
                    item("fail-d2", "2025-01-02T23:00:00Z", false),
                    item("ok-d2", "2025-01-02T01:00:00Z", true),
                    item("ok-d1", "2025-01-01T01:00:00Z", true),
                ],
                policy: daily(2),
                want: vec![
                    ("fail-new", "newer than newest successful"),
                    ("ok-d3", "daily,newest successful"),
                    ("ok-d2", "daily"),
                ],
            },
            Case {
                name: "failures do not count towards keep_last",
                items: vec![
                    item("ok1", "2025-01-01T00:00:00Z", true),
                    item("bad", "2025-01-01T01:00:00Z", false),
                    item("ok2", "2025-01-01T02:00:00Z", true),
                ],
                policy: last(2),
                want: vec![("ok2", "last,newest successful"), ("ok1", "last")],
            },
            Case {
                name: "with no successful backup nothing is deleted",
                items: vec![
                    item("bad1", "2025-01-01T00:00:00Z", false),
                    item("bad2", "2025-01-02T00:00:00Z", false),
                ],
                policy: last(1),
                want: vec![
                    ("bad2", "newer than newest successful"),
                    ("bad1", "newer than newest successful"),
                ],
            },
            Case {
                name: "identical timestamps: input order breaks the tie",
                items: vec![
                    item("first", "2025-01-01T00:00:00Z", true),
                    item("second", "2025-01-01T00:00:00Z", true),
                    item("third", "2025-01-01T00:00:00Z", true),
                ],
                policy: Policy {
                    keep_last: 2,
                    keep_daily: 1,
                    ..Policy::default()
                },
                want: vec![
                    ("first", "last,daily,newest successful"),
                    ("second", "last"),
                ],
            },
            Case {
                name: "same instant written with different offsets is a tie",
                items: vec![
                    item("utc", "2025-01-01T00:00:00Z", true),
                    item("plus8", "2025-01-01T08:00:00+08:00", true),
                ],
                policy: last(1),
                want: vec![("utc", "last,newest successful")],
            },
            Case {
                name: "offsets are compared as instants, not wall clock",
                items: vec![
                    item("wall-later", "2025-01-01T10:00:00+08:00", true),
                    item("wall-earlier", "2025-01-01T03:00:00Z", true),
                ],
                policy: last(1),
                want: vec![("wall-earlier", "last,newest successful")],
            },
        ]
    }

    #[test]
    fn table() {
        for case in cases() {
            let got = apply(&case.items, &case.policy, &utc()).unwrap();
            let want: Vec<(&str, String)> = case
                .want
                .iter()
                .map(|(id, r)| (*id, r.to_string()))
                .collect();
            assert_eq!(kept(&got), want, "case: {}", case.name);
            assert_eq!(got.len(), case.items.len(), "case: {}", case.name);
            assert!(
                got.windows(2).all(|w| w[0].time >= w[1].time),
                "case {}: not newest first",
                case.name
            );
        }
    }

    #[test]
    fn day_buckets_follow_the_time_zone() {
        // 15:00 and 17:00 UTC on 1 May are one UTC day, but 23:00 on 1 May
        // and 01:00 on 2 May in Singapore (UTC+8).
        let items = vec![
            item("a", "2025-05-01T15:00:00Z", true),
            item("b", "2025-05-01T17:00:00Z", true),
        ];
        let p = Policy {
            keep_daily: 2,
            ..Policy::default()
        };
        let in_utc = apply(&items, &p, &utc()).unwrap();
        let in_sg = apply(&items, &p, &chrono_tz::Asia::Singapore).unwrap();
        assert_eq!(
            kept(&in_utc),
            vec![("b", "daily,newest successful".to_string())]
        );
        assert_eq!(
            kept(&in_sg),
            vec![
                ("b", "daily,newest successful".to_string()),
                ("a", "daily".to_string())
            ]
        );
    }

    #[test]
    fn dst_fall_back_hour_is_one_bucket() {
        // New York leaves DST on 2025-11-02: 01:00-01:59 happens twice
        // (EDT then EST). Both occurrences are the same local hour.
        let items = vec![
            item("edt", "2025-11-02T01:30:00-04:00", true),
            item("est", "2025-11-02T01:30:00-05:00", true),
            item("before", "2025-11-02T00:30:00-04:00", true),
        ];
        let p = Policy {
            keep_hourly: 5,
            ..Policy::default()
        };
        let got = apply(&items, &p, &chrono_tz::America::New_York).unwrap();
        assert_eq!(
            kept(&got),
            vec![
                ("est", "hourly,newest successful".to_string()),
                ("before", "hourly".to_string())
            ]
        );
    }

    /// The issue-26 case: a manifest-less object newer than every checksummed backup takes
    /// the `--keep-last 1` slot, but the newest checksummed backup is still kept.
    #[test]
    fn unverifiable_items_never_count_as_newest_good() {
        let mut items = vec![
            item("checked-old", "2025-01-01T00:00:00Z", true),
            item("checked-new", "2025-01-02T00:00:00Z", true),
            item("no-manifest", "2025-01-03T00:00:00Z", true),
        ];
        items[2].checked = false;
        let p = Policy {
            keep_last: 1,
            ..Policy::default()
        };
        let got = apply(&items, &p, &utc()).unwrap();
        assert_eq!(
            kept(&got),
            vec![
                ("no-manifest", "last".into()),
                ("checked-new", "newest successful".into())
            ]
        );
    }

    #[test]
    fn decisions_serialize_as_json() {
        let items = vec![
            item("a", "2025-05-01T15:00:00Z", true),
            item("b", "2025-05-01T17:00:00+08:00", false),
        ];
        let p = Policy {
            keep_last: 1,
            ..Policy::default()
        };
        let got = apply(&items, &p, &utc()).unwrap();
        insta::with_settings!({prepend_module_to_snapshot => false}, {
            insta::assert_json_snapshot!("retention_decisions_json", got);
            insta::assert_json_snapshot!("retention_policy_json", p);
        });
    }

    /// A year of backups every 6 hours in UTC, plus irregular ones that
    /// exercise failures, ties, non-UTC offsets and a previous year.
    fn synthetic_year() -> Vec<Item<String>> {
        let start = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
        let mut items: Vec<Item<String>> = (0..365 * 4)
            .map(|i| {
                let time = start + Duration::hours(6 * i);
                Item {
                    id: format!("s{i:04}"),
                    time: time.fixed_offset(),
                    ok: true,
                    checked: true,
                }
            })
            .collect();
        let extra = [
            ("old-2024", "2024-12-31T12:00:00Z", true),
            // 2024 on the wall clock in New York, but 2025-01-01T01:00Z.
            ("nye-nyc", "2024-12-31T20:00:00-05:00", true),
            ("manual-sg", "2025-03-15T13:37:00+08:00", true),
            ("failed-jun", "2025-06-30T23:59:59Z", false),
            ("tie-jul4", "2025-07-04T12:00:00Z", true),
            ("late-dec", "2025-12-31T22:10:00Z", true),
            ("failed-newest", "2025-12-31T23:30:00Z", false),
        ];
        for (id, time, ok) in extra {
            items.push(Item {
                id: id.to_string(),
                time: t(time),
                ok,
                checked: true,
            });
        }
        items
    }

    /// One line per kept item plus a deleted count: readable in review, and
    /// a policy change shows up as a small diff.
    fn render(decisions: &[Decision<String>]) -> String {
        let mut out = String::new();
        for d in decisions.iter().filter(|d| d.keep) {
            out.push_str(&format!(
                "{} {:<13} {}\n",
                d.time.to_rfc3339(),
                d.id,
                d.reasons.join(", ")
            ));
        }
        let deleted = decisions.iter().filter(|d| !d.keep).count();
        out.push_str(&format!(
            "kept {}, deleted {deleted}\n",
            decisions.len() - deleted
        ));
        out
    }

    #[test]
    fn synthetic_year_snapshots() {
        let items = synthetic_year();
        let policies: [(&str, Policy); 4] = [
            (
                "retention_year_keep_last_3",
                Policy {
                    keep_last: 3,
                    ..Policy::default()
                },
            ),
            (
                "retention_year_keep_daily_7",
                Policy {
                    keep_daily: 7,
                    ..Policy::default()
                },
            ),
            (
                "retention_year_daily_7_weekly_4_monthly_12",
                Policy {
                    keep_daily: 7,
                    keep_weekly: 4,
                    keep_monthly: 12,
                    ..Policy::default()
                },
            ),
            (
                "retention_year_hourly_24_yearly_2",
                Policy {
                    keep_hourly: 24,
                    keep_yearly: 2,
                    ..Policy::default()
                },
            ),
        ];
        for (name, policy) in policies {
            let decisions = apply(&items, &policy, &utc()).unwrap();
            let text = format!("policy: {policy}\n{}", render(&decisions));
            insta::with_settings!({prepend_module_to_snapshot => false}, {
                insta::assert_snapshot!(name, text);
            });
        }
    }

    const ZONES: [Tz; 5] = [
        chrono_tz::UTC,
        chrono_tz::Asia::Singapore,
        chrono_tz::America::New_York,
        chrono_tz::Australia::Lord_Howe,
        chrono_tz::America::Santiago,
    ];

    fn items_strategy() -> impl Strategy<Value = Vec<Item<usize>>> {
        // Times within ~3 years, clustered enough (minute resolution over a
        // few thousand hours) to create shared buckets and exact ties.
        let one = (
            0i64..3 * 365 * 24,
            prop::sample::select(vec![0i64, 15, 30, 59]),
            -12i32..=14,
            0u8..10,
        );
        prop::collection::vec(one, 0..60).prop_map(|raw| {
            let base = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
            raw.into_iter()
                .enumerate()
                .map(|(id, (hours, minutes, offset_h, bad))| {
                    let offset = FixedOffset::east_opt(offset_h * 3600).unwrap();
                    Item {
                        id,
                        time: (base + Duration::hours(hours) + Duration::minutes(minutes))
                            .with_timezone(&offset),
                        ok: bad >= 2,
                        // 8 and 9: good by the rules, but unverifiable (no manifest).
                        checked: bad < 8,
                    }
                })
                .collect()
        })
    }

    fn policy_strategy() -> impl Strategy<Value = Policy> {
        (0u32..5, 0u32..5, 0u32..8, 0u32..5, 0u32..13, 0u32..3).prop_map(
            |(last, hourly, daily, weekly, monthly, yearly)| Policy {
                keep_last: last,
                keep_hourly: hourly,
                keep_daily: daily,
                keep_weekly: weekly,
                keep_monthly: monthly,
                keep_yearly: yearly,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn retention_properties(
            items in items_strategy(),
            policy in policy_strategy(),
            zone in prop::sample::select(ZONES.to_vec()),
        ) {
            let result = apply(&items, &policy, &zone);
            if policy.is_empty() {
                prop_assert_eq!(result, Err(RetentionError::NoKeepRule));
                return Ok(());
            }
            let decisions = result.unwrap();

            // One decision per item, newest first, every reason implies keep.
            prop_assert_eq!(decisions.len(), items.len());
            let mut ids: Vec<usize> = decisions.iter().map(|d| d.id).collect();
            ids.sort_unstable();
            prop_assert_eq!(ids, (0..items.len()).collect::<Vec<_>>());
            prop_assert!(decisions.windows(2).all(|w| w[0].time >= w[1].time));
            prop_assert!(decisions.iter().all(|d| d.keep != d.reasons.is_empty()));

            // The newest successful backup is always kept.
            let newest_ok = items
                .iter()
                .filter(|i| i.ok && i.checked)
                .max_by(|a, b| a.time.cmp(&b.time).then(b.id.cmp(&a.id)));
            if let Some(newest) = newest_ok {
                let d = decisions.iter().find(|d| d.id == newest.id).unwrap();
                prop_assert!(d.keep);
                prop_assert!(d.reasons.contains(&REASON_NEWEST_OK));
            }

            // Bounded by the rules (+1 for the newest-successful guarantee),
            // plus any failures newer than the newest successful backup.
            let ok_of = |id: usize| items[id].ok;
            let kept_ok = decisions.iter().filter(|d| d.keep && ok_of(d.id)).count() as u64;
            prop_assert!(kept_ok <= policy.max_kept() + 1);
            let newer_failures = match newest_ok {
                Some(n) => items.iter().filter(|i| !i.ok && i.time > n.time).count(),
                None => items.len(),
            } as u64;
            let kept_total = decisions.iter().filter(|d| d.keep).count() as u64;
            prop_assert!(kept_total <= policy.max_kept() + 1 + newer_failures);

            // Old failures are never kept.
            if let Some(n) = newest_ok {
                for d in decisions.iter().filter(|d| !ok_of(d.id) && d.time < n.time) {
                    prop_assert!(!d.keep);
                }
            }

            // Idempotence: pruning the kept set again deletes nothing.
            let survivors: Vec<Item<usize>> = decisions
                .iter()
                .filter(|d| d.keep)
                .map(|d| items[d.id].clone())
                .collect();
            let again = apply(&survivors, &policy, &zone).unwrap();
            prop_assert!(again.iter().all(|d| d.keep), "second pass deleted {:?}",
                again.iter().filter(|d| !d.keep).map(|d| d.id).collect::<Vec<_>>());
        }
    }
}
