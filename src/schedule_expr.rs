//! EventBridge rule schedule expressions (`rate(...)` / `cron(...)`), checked
//! locally.
//!
//! Why this exists: moto (and therefore every local test run) accepts any
//! string as a schedule, so a typo like `rate(5 minute)` would only surface
//! when a real AWS account rejects it — or worse, never, if the deploy path is
//! only exercised against moto. Validating here gives the user an immediate,
//! actionable error and keeps the local and real behaviour aligned.
//!
//! The rules follow the EventBridge user guide ("Rate expressions reference"
//! and "Cron expressions reference" for scheduled rules):
//! - rate: positive integer value; unit `minute|hour|day` when the value is
//!   1, `minutes|hours|days` otherwise.
//! - cron: exactly six fields. Minutes `0-59` (`, - * /`), hours `0-23`
//!   (`, - * /`), day-of-month `1-31` (`, - * ? / L W`), month `1-12` or
//!   `JAN-DEC` (`, - * /`), day-of-week `1-7` or `SUN-SAT` (`, - * ? L #`),
//!   year `1970-2199` (`, - * /`). Exactly one of day-of-month and
//!   day-of-week is `?`. With `#`, day-of-week holds a single expression.
//!
//! Where the guide is silent we follow Quartz (which EventBridge's syntax is
//! modelled on) but stay on the strict side: `L`, `W` and `#` forms must make
//! up the whole field rather than appear inside lists, ranges never wrap
//! around, and steps must lie between 1 and the field's largest value.

mod next;

pub use next::{longest_gap, next_runs};

use std::fmt;
use std::str::FromStr;

/// A schedule that has passed local validation. Its `Display` output is the
/// canonical form that should be sent to AWS, so that whitespace or letter
/// case accepted leniently here never reaches the API.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScheduleExpr {
    Rate { value: u32, unit: RateUnit },
    Cron(CronExpr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateUnit {
    Minutes,
    Hours,
    Days,
}

impl RateUnit {
    /// AWS insists the unit agrees in number with the value, so the spelling
    /// is derived from the value rather than stored.
    pub fn spelling(self, value: u32) -> &'static str {
        match (self, value == 1) {
            (RateUnit::Minutes, true) => "minute",
            (RateUnit::Minutes, false) => "minutes",
            (RateUnit::Hours, true) => "hour",
            (RateUnit::Hours, false) => "hours",
            (RateUnit::Days, true) => "day",
            (RateUnit::Days, false) => "days",
        }
    }
}

/// A validated six-field cron expression.
///
/// Fields are kept as their canonical text (names upper-cased) rather than as
/// a decoded set of instants: the only consumer is EventBridge itself, which
/// does its own evaluation, and keeping the user's notation (`MON-FRI`
/// rather than `2-6`) keeps `backhaul` output recognisable. Construction is
/// only possible through [`parse`], so a `CronExpr` is always valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CronExpr {
    fields: [String; 6],
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cron({})", self.fields.join(" "))
    }
}

impl fmt::Display for ScheduleExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleExpr::Rate { value, unit } => {
                write!(f, "rate({value} {})", unit.spelling(*value))
            }
            ScheduleExpr::Cron(c) => c.fmt(f),
        }
    }
}

impl FromStr for ScheduleExpr {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// The rejected input plus what was wrong with it. The input is rendered with
/// `{:?}` so that a stray newline or control character in user input can
/// never break the one-line error contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid schedule {expr:?}: {kind}")]
pub struct ScheduleError {
    pub expr: String,
    pub kind: ScheduleErrorKind,
}

/// Every message names the problem and ends with a concrete, valid example so
/// the user can fix the flag without opening the AWS docs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleErrorKind {
    #[error("the schedule is empty: use rate(value unit) or cron(minutes hours day-of-month month day-of-week year), e.g. rate(1 day) or cron(0 3 * * ? *)")]
    Empty,
    #[error("expected rate(value unit) or cron(minutes hours day-of-month month day-of-week year), e.g. rate(1 day) or cron(0 3 * * ? *)")]
    UnknownForm,
    #[error("missing closing ')', e.g. {example}")]
    MissingParen { example: &'static str },
    #[error("rate needs a value and a unit separated by a space, e.g. rate(5 minutes)")]
    RateShape,
    #[error("rate value {value:?} is not a whole number, e.g. rate(5 minutes)")]
    RateValueNotNumber { value: String },
    #[error("rate value must be at least 1, e.g. rate(1 {unit})")]
    RateValueZero { unit: &'static str },
    #[error("rate value {value} is too large, e.g. rate(365 days)")]
    RateValueTooLarge { value: String },
    #[error("unknown rate unit {unit:?}: use minute(s), hour(s) or day(s), e.g. rate(5 minutes)")]
    RateUnit { unit: String },
    #[error("use the singular unit when the value is 1, e.g. rate(1 {singular})")]
    RateNeedsSingular { singular: &'static str },
    #[error("use the plural unit when the value is not 1, e.g. rate({value} {plural})")]
    RateNeedsPlural { value: u32, plural: &'static str },
    #[error("cron needs 6 fields (minutes hours day-of-month month day-of-week year), e.g. cron(0 3 * * ? *)")]
    CronFieldCount { found: usize },
    #[error("one of day-of-month and day-of-week must be '?', e.g. cron(0 3 * * ? *)")]
    DayNeedsQuestion,
    #[error("only one of day-of-month and day-of-week may be '?', e.g. cron(0 3 * * ? *)")]
    BothDaysQuestion,
    #[error("{field} {problem}: {field} takes {values} and the wildcards {wildcards}, e.g. {example}", values = .field.values(), wildcards = .field.wildcards(), example = .field.example())]
    Field {
        field: CronField,
        problem: FieldProblem,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CronField {
    Minutes,
    Hours,
    DayOfMonth,
    Month,
    DayOfWeek,
    Year,
}

const FIELDS: [CronField; 6] = [
    CronField::Minutes,
    CronField::Hours,
    CronField::DayOfMonth,
    CronField::Month,
    CronField::DayOfWeek,
    CronField::Year,
];

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl CronField {
    fn bounds(self) -> (u32, u32) {
        match self {
            CronField::Minutes => (0, 59),
            CronField::Hours => (0, 23),
            CronField::DayOfMonth => (1, 31),
            CronField::Month => (1, 12),
            CronField::DayOfWeek => (1, 7),
            CronField::Year => (1970, 2199),
        }
    }

    fn names(self) -> &'static [&'static str] {
        match self {
            CronField::Month => &MONTHS,
            CronField::DayOfWeek => &DAYS,
            _ => &[],
        }
    }

    /// Largest sensible increment. Quartz caps increments at the field's
    /// maximum value; for years that would be meaningless, so the span of the
    /// allowed range is used instead.
    fn max_step(self) -> u32 {
        match self {
            CronField::Year => 2199 - 1970,
            other => other.bounds().1,
        }
    }

    fn values(self) -> &'static str {
        match self {
            CronField::Minutes => "0-59",
            CronField::Hours => "0-23",
            CronField::DayOfMonth => "1-31",
            CronField::Month => "1-12 or JAN-DEC",
            CronField::DayOfWeek => "1-7 or SUN-SAT",
            CronField::Year => "1970-2199",
        }
    }

    fn wildcards(self) -> &'static str {
        match self {
            CronField::DayOfMonth => ", - * ? / L W",
            CronField::DayOfWeek => ", - * ? L #",
            _ => ", - * /",
        }
    }

    fn example(self) -> &'static str {
        match self {
            CronField::Minutes => "cron(0/15 * * * ? *)",
            CronField::Hours => "cron(0 9-17 * * ? *)",
            CronField::DayOfMonth => "cron(0 3 1,15 * ? *)",
            CronField::Month => "cron(0 3 1 JAN,JUL ? *)",
            CronField::DayOfWeek => "cron(0 3 ? * MON-FRI *)",
            CronField::Year => "cron(0 3 * * ? 2026-2030)",
        }
    }
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Minutes => "minutes",
            CronField::Hours => "hours",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
            CronField::Year => "year",
        })
    }
}

/// What is wrong inside one cron field. Rendered after the field name, e.g.
/// "minutes value 99 is out of range".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldProblem {
    #[error("value {0} is out of range")]
    OutOfRange(String),
    #[error("has an unrecognised value {0:?}")]
    BadValue(String),
    #[error("has an empty list item")]
    EmptyItem,
    #[error("cannot use '{0}'")]
    WildcardNotAllowed(char),
    #[error("range {0} runs backwards (put the lower value first)")]
    RangeBackwards(String),
    #[error("step {step:?} must be a whole number from 1 to {max}")]
    BadStep { step: String, max: u32 },
    #[error("occurrence in {0:?} must be 1-5 (e.g. 6#3 is the third Friday)")]
    BadOccurrence(String),
    #[error("'{0}' must be the whole field, not part of a list or range")]
    SpecialNotAlone(char),
}

/// Parses and validates an EventBridge rule schedule expression.
///
/// Surrounding whitespace and runs of spaces between fields are tolerated
/// (people paste these from docs and shells); `Display` on the result gives
/// the canonical spelling to send to AWS.
pub fn parse(expr: &str) -> Result<ScheduleExpr, ScheduleError> {
    parse_inner(expr.trim()).map_err(|kind| ScheduleError {
        expr: expr.to_string(),
        kind,
    })
}

fn parse_inner(s: &str) -> Result<ScheduleExpr, ScheduleErrorKind> {
    if s.is_empty() {
        return Err(ScheduleErrorKind::Empty);
    }
    if let Some(rest) = s.strip_prefix("rate(") {
        let body = rest
            .strip_suffix(')')
            .ok_or(ScheduleErrorKind::MissingParen {
                example: "rate(5 minutes)",
            })?;
        parse_rate(body)
    } else if let Some(rest) = s.strip_prefix("cron(") {
        let body = rest
            .strip_suffix(')')
            .ok_or(ScheduleErrorKind::MissingParen {
                example: "cron(0 3 * * ? *)",
            })?;
        parse_cron(body).map(ScheduleExpr::Cron)
    } else {
        Err(ScheduleErrorKind::UnknownForm)
    }
}

fn parse_rate(body: &str) -> Result<ScheduleExpr, ScheduleErrorKind> {
    let parts: Vec<&str> = body.split_whitespace().collect();
    let [value_text, unit_text] = parts[..] else {
        return Err(ScheduleErrorKind::RateShape);
    };
    let (unit, plural) = match unit_text {
        "minute" => (RateUnit::Minutes, false),
        "minutes" => (RateUnit::Minutes, true),
        "hour" => (RateUnit::Hours, false),
        "hours" => (RateUnit::Hours, true),
        "day" => (RateUnit::Days, false),
        "days" => (RateUnit::Days, true),
        other => {
            return Err(ScheduleErrorKind::RateUnit {
                unit: other.to_string(),
            })
        }
    };
    if !value_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ScheduleErrorKind::RateValueNotNumber {
            value: value_text.to_string(),
        });
    }
    let value: u32 = value_text
        .parse()
        .map_err(|_| ScheduleErrorKind::RateValueTooLarge {
            value: value_text.to_string(),
        })?;
    if value == 0 {
        return Err(ScheduleErrorKind::RateValueZero {
            unit: unit.spelling(1),
        });
    }
    if value == 1 && plural {
        return Err(ScheduleErrorKind::RateNeedsSingular {
            singular: unit.spelling(1),
        });
    }
    if value != 1 && !plural {
        return Err(ScheduleErrorKind::RateNeedsPlural {
            value,
            plural: unit.spelling(value),
        });
    }
    Ok(ScheduleExpr::Rate { value, unit })
}

fn parse_cron(body: &str) -> Result<CronExpr, ScheduleErrorKind> {
    let parts: Vec<&str> = body.split_whitespace().collect();
    if parts.len() != 6 {
        return Err(ScheduleErrorKind::CronFieldCount { found: parts.len() });
    }
    let mut fields: [String; 6] = Default::default();
    for ((slot, field), text) in fields.iter_mut().zip(FIELDS).zip(&parts) {
        let upper = text.to_ascii_uppercase();
        check_field(field, &upper)
            .map_err(|problem| ScheduleErrorKind::Field { field, problem })?;
        *slot = upper;
    }
    // Checked after the per-field pass so that a malformed field is reported
    // as such rather than masked by the day-field pairing rule.
    match (fields[2] == "?", fields[4] == "?") {
        (false, false) => Err(ScheduleErrorKind::DayNeedsQuestion),
        (true, true) => Err(ScheduleErrorKind::BothDaysQuestion),
        _ => Ok(CronExpr { fields }),
    }
}

fn check_field(field: CronField, text: &str) -> Result<(), FieldProblem> {
    let is_day = matches!(field, CronField::DayOfMonth | CronField::DayOfWeek);
    if text == "?" {
        return if is_day {
            Ok(())
        } else {
            Err(FieldProblem::WildcardNotAllowed('?'))
        };
    }
    if text.contains('?') {
        return if is_day {
            Err(FieldProblem::SpecialNotAlone('?'))
        } else {
            Err(FieldProblem::WildcardNotAllowed('?'))
        };
    }
    if let Some(special) = ['#', 'L', 'W'].into_iter().find(|c| text.contains(*c)) {
        return check_special(field, text, special);
    }
    if field == CronField::DayOfWeek && text.contains('/') {
        return Err(FieldProblem::WildcardNotAllowed('/'));
    }
    for item in text.split(',') {
        check_item(field, item)?;
    }
    Ok(())
}

/// `L`, `W` and `#` only make sense for a single day, so they are accepted only
/// as the entire field: dom `L`, `LW`, `<n>W`; dow `L`, `<d>L`, `<d>#<n>`.
/// Names contain the letters L and W (`JUL`, `WED`), so a name-only field is
/// routed back to the ordinary item check first.
fn check_special(field: CronField, text: &str, special: char) -> Result<(), FieldProblem> {
    if special != '#'
        && text
            .split(',')
            .all(|item| looks_like_plain_item(field, item))
    {
        for item in text.split(',') {
            check_item(field, item)?;
        }
        return Ok(());
    }
    match field {
        CronField::DayOfMonth => {
            if text.contains('#') {
                return Err(FieldProblem::WildcardNotAllowed('#'));
            }
            if text == "L" || text == "LW" {
                return Ok(());
            }
            if let Some(day) = text.strip_suffix('W') {
                if is_digits(day) {
                    return check_value(field, day).map(|_| ());
                }
            }
            Err(not_alone_or_bad(text, special))
        }
        CronField::DayOfWeek => {
            if text == "L" {
                return Ok(());
            }
            if let Some((day, nth)) = text.split_once('#') {
                if is_single_value(day) && is_digits(nth) {
                    check_value(field, day)?;
                    return match nth.parse::<u32>() {
                        Ok(1..=5) => Ok(()),
                        _ => Err(FieldProblem::BadOccurrence(text.to_string())),
                    };
                }
            } else if let Some(day) = text.strip_suffix('L') {
                if is_single_value(day) {
                    return check_value(field, day).map(|_| ());
                }
            }
            // `W` inside a day name (WED) was handled as a plain item above.
            if text
                .split(',')
                .any(|item| item.ends_with('W') || item == "W")
            {
                return Err(FieldProblem::WildcardNotAllowed('W'));
            }
            Err(not_alone_or_bad(text, special))
        }
        _ => Err(FieldProblem::WildcardNotAllowed(special)),
    }
}

fn not_alone_or_bad(text: &str, special: char) -> FieldProblem {
    if text.contains([',', '-', '/', '*']) {
        FieldProblem::SpecialNotAlone(special)
    } else {
        FieldProblem::BadValue(text.to_string())
    }
}

/// True when every letter in `item` belongs to a month/day name, i.e. the
/// L/W/# that sent us to `check_special` came from a name like `JUL`.
fn looks_like_plain_item(field: CronField, item: &str) -> bool {
    item.split(['-', '/'])
        .all(|part| part == "*" || is_digits(part) || field.names().contains(&part))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_single_value(s: &str) -> bool {
    is_digits(s) || DAYS.contains(&s)
}

/// One comma-separated item: `*`, `v`, `a-b`, each optionally followed by
/// `/step`.
fn check_item(field: CronField, item: &str) -> Result<(), FieldProblem> {
    if item.is_empty() {
        return Err(FieldProblem::EmptyItem);
    }
    let (base, step) = match item.split_once('/') {
        Some((base, step)) => (base, Some(step)),
        None => (item, None),
    };
    if let Some(step) = step {
        let max = field.max_step();
        let ok = is_digits(step) && matches!(step.parse::<u32>(), Ok(n) if (1..=max).contains(&n));
        if !ok {
            return Err(FieldProblem::BadStep {
                step: step.to_string(),
                max,
            });
        }
    }
    if base == "*" {
        return Ok(());
    }
    match base.split_once('-') {
        Some((lo, hi)) => {
            let lo_v = check_value(field, lo)?;
            let hi_v = check_value(field, hi)?;
            if lo_v > hi_v {
                return Err(FieldProblem::RangeBackwards(base.to_string()));
            }
            Ok(())
        }
        None => check_value(field, base).map(|_| ()),
    }
}

fn check_value(field: CronField, text: &str) -> Result<u32, FieldProblem> {
    if let Some(pos) = field.names().iter().position(|n| *n == text) {
        return Ok(pos as u32 + 1);
    }
    if !is_digits(text) {
        return Err(FieldProblem::BadValue(text.to_string()));
    }
    let (lo, hi) = field.bounds();
    match text.parse::<u32>() {
        Ok(v) if (lo..=hi).contains(&v) => Ok(v),
        _ => Err(FieldProblem::OutOfRange(text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const VALID: &[(&str, &str)] = &[
        ("rate(1 minute)", "rate(1 minute)"),
        ("rate(5 minutes)", "rate(5 minutes)"),
        ("rate(1 hour)", "rate(1 hour)"),
        ("rate(12 hours)", "rate(12 hours)"),
        ("rate(1 day)", "rate(1 day)"),
        ("rate(7 days)", "rate(7 days)"),
        ("  rate(2   days) ", "rate(2 days)"),
        ("cron(0 3 * * ? *)", "cron(0 3 * * ? *)"),
        ("cron(15 10 * * ? *)", "cron(15 10 * * ? *)"),
        ("cron(0 18 ? * MON-FRI *)", "cron(0 18 ? * MON-FRI *)"),
        ("cron(0 8 1 * ? *)", "cron(0 8 1 * ? *)"),
        ("cron(0/10 * ? * MON-FRI *)", "cron(0/10 * ? * MON-FRI *)"),
        (
            "cron(0/5 8-17 ? * MON-FRI *)",
            "cron(0/5 8-17 ? * MON-FRI *)",
        ),
        ("cron(0 9 ? * 2#1 *)", "cron(0 9 ? * 2#1 *)"),
        ("cron(15 10 ? * 6L *)", "cron(15 10 ? * 6L *)"),
        ("cron(0 23 L * ? *)", "cron(0 23 L * ? *)"),
        ("cron(0 9 LW * ? *)", "cron(0 9 LW * ? *)"),
        ("cron(0 9 15W * ? *)", "cron(0 9 15W * ? *)"),
        ("cron(0 9 ? * L *)", "cron(0 9 ? * L *)"),
        ("cron(0 9 ? * FRI#3 *)", "cron(0 9 ? * FRI#3 *)"),
        ("cron(0 3 1 JAN,JUL ? *)", "cron(0 3 1 JAN,JUL ? *)"),
        ("cron(0 3 1 jan-jun ? *)", "cron(0 3 1 JAN-JUN ? *)"),
        ("cron(0 3 ? * wed,sat *)", "cron(0 3 ? * WED,SAT *)"),
        ("cron(*/15 * * * ? *)", "cron(*/15 * * * ? *)"),
        (
            "cron(0-30/10 0-23/6 1/2 1-12/3 ? *)",
            "cron(0-30/10 0-23/6 1/2 1-12/3 ? *)",
        ),
        ("cron(59 23 31 12 ? 2199)", "cron(59 23 31 12 ? 2199)"),
        ("cron(0 0 ? * 1-7 1970-2199)", "cron(0 0 ? * 1-7 1970-2199)"),
        ("cron(0 0 ? * SUN,7 2026/2)", "cron(0 0 ? * SUN,7 2026/2)"),
        ("cron(0 0 ? 7 * *)", "cron(0 0 ? 7 * *)"),
        ("cron(0 0 ? * WED#2 *)", "cron(0 0 ? * WED#2 *)"),
        ("cron(0 0 ? * WEDL *)", "cron(0 0 ? * WEDL *)"),
        ("cron(0 0 ? JUL WED *)", "cron(0 0 ? JUL WED *)"),
        ("cron(0 0 ? * l *)", "cron(0 0 ? * L *)"),
    ];

    #[test]
    fn valid_expressions_parse_to_canonical_form() {
        for &(input, canon) in VALID {
            let parsed = parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(parsed.to_string(), canon, "input {input}");
            assert_eq!(parse(canon).unwrap(), parsed, "round trip {input}");
        }
    }

    #[test]
    fn rate_fields_are_exposed() {
        assert_eq!(
            parse("rate(5 minutes)").unwrap(),
            ScheduleExpr::Rate {
                value: 5,
                unit: RateUnit::Minutes
            }
        );
        let ScheduleExpr::Cron(c) = parse("cron(1 2 ? 4 5 2030)").unwrap() else {
            panic!("expected cron");
        };
        assert_eq!(c.fields, ["1", "2", "?", "4", "5", "2030"]);
    }

    const INVALID: &[&str] = &[
        "",
        "   ",
        "every 5 minutes",
        "RATE(5 minutes)",
        "rate(5 minutes",
        "cron(0 3 * * ? *",
        "rate()",
        "rate(5)",
        "rate(5 minutes extra)",
        "rate(minutes)",
        "rate(-5 minutes)",
        "rate(1.5 hours)",
        "rate(0 minutes)",
        "rate(99999999999 minutes)",
        "rate(5 weeks)",
        "rate(5 Minutes)",
        "rate(5 minute)",
        "rate(1 minutes)",
        "rate(2 hour)",
        "rate(1 days)",
        "cron(0 3 * * *)",
        "cron(0 3 * * ? * *)",
        "cron()",
        "cron(0 3 * * * *)",
        "cron(0 3 1 * MON *)",
        "cron(0 3 ? * ? *)",
        "cron(99 99 * * ? *)",
        "cron(60 3 * * ? *)",
        "cron(0 24 * * ? *)",
        "cron(0 3 0 * ? *)",
        "cron(0 3 32 * ? *)",
        "cron(0 3 1 13 ? *)",
        "cron(0 3 1 0 ? *)",
        "cron(0 3 ? * 0 *)",
        "cron(0 3 ? * 8 *)",
        "cron(0 3 * * ? 1969)",
        "cron(0 3 * * ? 2200)",
        "cron(0 3 1 FOO ? *)",
        "cron(0 3 ? * MONDAY *)",
        "cron(30-10 3 * * ? *)",
        "cron(0 3 ? * FRI-MON *)",
        "cron(0/0 3 * * ? *)",
        "cron(0/60 3 * * ? *)",
        "cron(0/x 3 * * ? *)",
        "cron(0,,5 3 * * ? *)",
        "cron(? 3 * * ? *)",
        "cron(0 L * * ? *)",
        "cron(0 3 * * ? L)",
        "cron(0 3 1W,15 * ? *)",
        "cron(0 3 32W * ? *)",
        "cron(0 3 ? * 6#6 *)",
        "cron(0 3 ? * 6#0 *)",
        "cron(0 3 ? * 3#1,6#3 *)",
        "cron(0 3 ? * 8L *)",
        "cron(0 3 # * ? *)",
        "cron(0 3 ? * 5W *)",
        "cron(0 3 ? * */2 *)",
        "cron(0 3 ?5 * ? *)",
        "cron(0 3 * JUL#2 ? *)",
        "cron(0 3 L-2 * ? *)",
        "cron(5-* 3 * * ? *)",
        "cron(0 3 * * ? *)\n; rm -rf /",
    ];

    #[test]
    fn invalid_expressions_have_one_line_messages() {
        let mut report = String::new();
        for input in INVALID {
            let err = parse(input).expect_err(input);
            let msg = err.to_string();
            assert!(
                !msg.contains('\n'),
                "multi-line message for {input:?}: {msg}"
            );
            assert!(msg.contains("e.g. "), "no example in message: {msg}");
            // Every suggested example must itself be valid, or the hint is a lie.
            let example = msg.rsplit("e.g. ").next().unwrap();
            for ex in example.split(" or ") {
                parse(ex).unwrap_or_else(|e| panic!("example {ex:?} in {msg:?} is invalid: {e}"));
            }
            report.push_str(&msg);
            report.push('\n');
        }
        insta::with_settings!({prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!("schedule_expr_invalid_messages", report);
        });
    }

    #[test]
    fn brief_examples_match_exactly() {
        let cases = [
            (
                "rate(5 minute)",
                r#"invalid schedule "rate(5 minute)": use the plural unit when the value is not 1, e.g. rate(5 minutes)"#,
            ),
            (
                "cron(0 3 * * *)",
                r#"invalid schedule "cron(0 3 * * *)": cron needs 6 fields (minutes hours day-of-month month day-of-week year), e.g. cron(0 3 * * ? *)"#,
            ),
            (
                "cron(0 3 * * * *)",
                r#"invalid schedule "cron(0 3 * * * *)": one of day-of-month and day-of-week must be '?', e.g. cron(0 3 * * ? *)"#,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input).unwrap_err().to_string(), want);
        }
    }

    #[test]
    fn error_kind_is_matchable() {
        let err = parse("cron(0 3 * *)").unwrap_err();
        assert_eq!(err.kind, ScheduleErrorKind::CronFieldCount { found: 4 });
        assert_eq!(err.expr, "cron(0 3 * *)");
        let err = parse("cron(99 3 * * ? *)").unwrap_err();
        assert_eq!(
            err.kind,
            ScheduleErrorKind::Field {
                field: CronField::Minutes,
                problem: FieldProblem::OutOfRange("99".into())
            }
        );
    }

    #[test]
    fn from_str_matches_parse() {
        let a: ScheduleExpr = "rate(3 hours)".parse().unwrap();
        assert_eq!(a, parse("rate(3 hours)").unwrap());
        assert!("rate(3 hour)".parse::<ScheduleExpr>().is_err());
    }

    fn rate_strategy() -> impl Strategy<Value = String> {
        (
            1u32..100_000,
            prop::sample::select(vec!["minute", "hour", "day"]),
        )
            .prop_map(|(v, u)| {
                if v == 1 {
                    format!("rate(1 {u})")
                } else {
                    format!("rate({v} {u}s)")
                }
            })
    }

    /// Builds one valid field from its bounds and names. `names` lets month
    /// and day-of-week fields also produce their name spellings.
    fn field_strategy(lo: u32, hi: u32, names: &'static [&'static str]) -> BoxedStrategy<String> {
        let value = move |use_name: bool, v: u32| -> String {
            if use_name && !names.is_empty() {
                names[(v - lo) as usize].to_string()
            } else {
                v.to_string()
            }
        };
        let max_step = if lo >= 1970 { hi - lo } else { hi };
        prop_oneof![
            Just("*".to_string()),
            (any::<bool>(), lo..=hi).prop_map(move |(n, v)| value(n, v)),
            (any::<bool>(), lo..=hi, lo..=hi).prop_map(move |(n, a, b)| {
                format!("{}-{}", value(n, a.min(b)), value(n, a.max(b)))
            }),
            (lo..=hi, 1..=max_step).prop_map(|(a, s)| format!("{a}/{s}")),
            (1..=max_step).prop_map(|s| format!("*/{s}")),
            prop::collection::vec(lo..=hi, 1..4)
                .prop_map(|vs| { vs.iter().map(u32::to_string).collect::<Vec<_>>().join(",") }),
        ]
        .boxed()
    }

    fn dow_strategy() -> BoxedStrategy<String> {
        prop_oneof![
            Just("*".to_string()),
            Just("L".to_string()),
            (1u32..=7).prop_map(|d| format!("{d}L")),
            (1u32..=7, 1u32..=5).prop_map(|(d, n)| format!("{d}#{n}")),
            prop::sample::select(DAYS.to_vec()).prop_map(|d| format!("{d}#2")),
            (1u32..=7, 1u32..=7).prop_map(|(a, b)| format!(
                "{}-{}",
                DAYS[a.min(b) as usize - 1],
                b.max(a)
            )),
        ]
        .boxed()
    }

    fn dom_strategy() -> BoxedStrategy<String> {
        prop_oneof![
            field_strategy(1, 31, &[]),
            Just("L".to_string()),
            Just("LW".to_string()),
            (1u32..=31).prop_map(|d| format!("{d}W")),
        ]
        .boxed()
    }

    fn cron_strategy() -> impl Strategy<Value = String> {
        (
            field_strategy(0, 59, &[]),
            field_strategy(0, 23, &[]),
            dom_strategy(),
            field_strategy(1, 12, &MONTHS),
            dow_strategy(),
            field_strategy(1970, 2199, &[]),
            any::<bool>(),
        )
            .prop_map(|(mi, h, dom, mo, dow, y, dom_q)| {
                let (dom, dow) = if dom_q {
                    ("?".to_string(), dow)
                } else {
                    (dom, "?".to_string())
                };
                format!("cron({mi} {h} {dom} {mo} {dow} {y})")
            })
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC*") {
            let _ = parse(&s);
        }

        #[test]
        fn cron_shaped_garbage_never_panics(
            fields in prop::collection::vec("[0-9A-Z*?/,#LW-]{0,6}", 0..8)
        ) {
            let s = format!("cron({})", fields.join(" "));
            if let Err(e) = parse(&s) {
                prop_assert!(!e.to_string().contains('\n'));
            }
        }

        #[test]
        fn generated_rates_round_trip(s in rate_strategy()) {
            let parsed = parse(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed.to_string(), s.clone());
            prop_assert_eq!(parse(&parsed.to_string()).unwrap(), parsed);
        }

        #[test]
        fn generated_crons_round_trip(s in cron_strategy()) {
            let parsed = parse(&s).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed.to_string(), s.clone());
            prop_assert_eq!(parse(&parsed.to_string()).unwrap(), parsed);
        }

        #[test]
        fn lowercase_names_canonicalise_to_uppercase(s in cron_strategy()) {
            let parsed = parse(&s.to_ascii_lowercase())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(parsed.to_string(), s);
        }
    }
}
