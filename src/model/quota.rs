//! Quota policies and their arithmetic: windows (calendar, rolling, GCRA), parsing them, and
//! what a stored window state means at a given time.
//!
//! A policy meters one operation (`concept_generation`, ...) per session. Three kinds:
//! - **calendar** windows aligned in UTC (`minute`, `hour`, `day`, `month`): a month window
//!   ends at the first instant of the next calendar month, whatever its length;
//! - **rolling** windows of a fixed length starting at the first use in the window;
//! - **GCRA** (token bucket): `burst` tokens, refilled one per `period / rate`.
//!
//! Stored states (one hash field per policy on the session): `"<end>:<used>"` for calendar
//! and rolling windows (end in Unix seconds), `"<tat>"` for GCRA (theoretical arrival time,
//! Unix milliseconds). Decisions themselves are taken atomically inside Redis
//! (`store/consume.lua`, same arithmetic); this module only reads states. Pure rules: it
//! imports nothing else of the crate and never does I/O.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Utc};

/// Calendar units a window can be aligned to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CalendarUnit {
    Minute,
    Hour,
    Day,
    Month,
}

impl CalendarUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            CalendarUnit::Minute => "minute",
            CalendarUnit::Hour => "hour",
            CalendarUnit::Day => "day",
            CalendarUnit::Month => "month",
        }
    }
}

/// How a policy's allowance is replenished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Calendar(CalendarUnit),
    Rolling(Duration),
    /// One token every `interval`, at most `burst` tokens banked (the policy's limit).
    Gcra {
        interval: Duration,
    },
}

/// Whether `name` may name a usage counter: `[a-z][a-z0-9_]{0,62}`, so it is safe as a JSON
/// key, a Redis hash field suffix and a Prometheus label value alike.
pub fn is_counter_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The usage counters the policies feed, each once, in the order the policies name them:
/// the counters `usage_stats` shows.
pub fn counters(policies: &[Policy]) -> Vec<Arc<str>> {
    let mut names: Vec<Arc<str>> = Vec::new();
    for counter in policies.iter().filter_map(|p| p.counter.as_ref()) {
        if !names.contains(counter) {
            names.push(counter.clone());
        }
    }
    names
}

/// How much a policy allows: what a plan may override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    /// Allowance per window, or the bucket size for GCRA.
    pub limit: u64,
    pub window: Window,
    /// Cost of a request that names none.
    pub default_cost: u64,
}

/// Whether a policy refuses what it does not allow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Enforce,
    /// Never refuses: grants everything and reports what enforcement would have answered,
    /// to try a new limit on live traffic before it bites.
    Shadow,
}

/// One configured quota policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub operation: String,
    /// The allowance of a session on no plan (or on a plan that does not override it).
    pub allowance: Allowance,
    /// The usage counter a granted request feeds (a name from [`is_counter_name`]).
    pub counter: Option<Arc<str>>,
    pub mode: Mode,
    /// The plans that override the allowance, by plan name, in configuration order.
    pub plans: Vec<(Arc<str>, Allowance)>,
}

/// A policy's state as a client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaStatus {
    pub limit: u64,
    pub remaining: u64,
    /// Unix seconds at which `remaining` is back to `limit`.
    pub reset_at: i64,
}

/// Parses a window: a calendar unit (`"month"`), or a rolling length (`"24 hours"`).
pub fn parse_window(text: &str) -> Result<Window, String> {
    match text.trim() {
        "minute" => Ok(Window::Calendar(CalendarUnit::Minute)),
        "hour" => Ok(Window::Calendar(CalendarUnit::Hour)),
        "day" => Ok(Window::Calendar(CalendarUnit::Day)),
        "month" => Ok(Window::Calendar(CalendarUnit::Month)),
        other => parse_duration(other).map(Window::Rolling).map_err(|_| {
            format!("{other:?} is not minute, hour, day, month or a length such as \"24 hours\"")
        }),
    }
}

/// Parses `"N seconds|minutes|hours|days"` (singular too).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut parts = text.split_whitespace();
    let (Some(count), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{text:?} is not of the form \"N unit\""));
    };
    let count: u64 = count
        .parse()
        .map_err(|_| format!("{count:?} is not a whole number"))?;
    let unit_secs = match unit.trim_end_matches('s') {
        "second" => 1,
        "minute" => 60,
        "hour" => 3600,
        "day" => 86_400,
        _ => return Err(format!("{unit:?} is not seconds, minutes, hours or days")),
    };
    match count.checked_mul(unit_secs) {
        Some(secs) if secs > 0 && secs <= 366 * 86_400 => Ok(Duration::from_secs(secs)),
        _ => Err(format!("{text:?} must be between 1 second and 366 days")),
    }
}

/// The end (exclusive, Unix seconds) of the calendar window holding `now`.
pub fn calendar_end(unit: CalendarUnit, now: i64) -> i64 {
    let step = match unit {
        CalendarUnit::Minute => 60,
        CalendarUnit::Hour => 3600,
        CalendarUnit::Day => 86_400,
        CalendarUnit::Month => return next_month_start(now),
    };
    (now.div_euclid(step) + 1) * step
}

fn next_month_start(now: i64) -> i64 {
    let date = utc_date(now);
    match date.month() {
        12 => first_of_month(date.year() + 1, 1, now),
        m => first_of_month(date.year(), m + 1, now),
    }
}

fn month_start(now: i64) -> i64 {
    let date = utc_date(now);
    first_of_month(date.year(), date.month(), now)
}

fn utc_date(now: i64) -> NaiveDate {
    DateTime::<Utc>::from_timestamp(now, 0)
        .unwrap_or_default()
        .date_naive()
}

/// Midnight UTC on the first of the month; `fallback` only for years chrono cannot represent.
fn first_of_month(year: i32, month: u32, fallback: i64) -> i64 {
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(fallback, |t| t.and_utc().timestamp())
}

impl Policy {
    /// An enforced policy on no plan, feeding no counter.
    pub fn new(operation: &str, limit: u64, window: Window) -> Policy {
        Policy {
            operation: operation.to_string(),
            allowance: Allowance {
                limit,
                window,
                default_cost: 1,
            },
            counter: None,
            mode: Mode::Enforce,
            plans: Vec::new(),
        }
    }

    /// The contract's default policies.
    pub fn defaults() -> Vec<Policy> {
        let policy = |operation: &str, window, counter: &str| Policy {
            counter: Some(Arc::from(counter)),
            ..Policy::new(operation, 10, window)
        };
        vec![
            policy(
                "concept_generation",
                Window::Calendar(CalendarUnit::Month),
                "concepts_generated",
            ),
            policy(
                "concept_refinement",
                Window::Rolling(Duration::from_secs(86_400)),
                "concepts_refined",
            ),
            policy(
                "concept_storage",
                Window::Calendar(CalendarUnit::Month),
                "concepts_stored",
            ),
        ]
    }

    /// The allowance in force for a session on `plan` (`None`: no plan).
    pub fn allowance_on(&self, plan: Option<&str>) -> &Allowance {
        plan.and_then(|plan| self.plans.iter().find(|(name, _)| &**name == plan))
            .map_or(&self.allowance, |(_, allowance)| allowance)
    }

    /// The largest limit of any plan: a request may never cost more.
    pub fn largest_limit(&self) -> u64 {
        self.plans
            .iter()
            .map(|(_, allowance)| allowance.limit)
            .fold(self.allowance.limit, u64::max)
    }
}

impl Allowance {
    /// The window length in seconds, for the `RateLimit-Policy` header; a calendar window
    /// reports its current length (a month is 28 to 31 days).
    pub fn window_secs(&self, now: i64) -> i64 {
        match self.window {
            Window::Calendar(CalendarUnit::Month) => next_month_start(now) - month_start(now),
            Window::Calendar(unit) => calendar_end(unit, 0),
            Window::Rolling(length) => length.as_secs() as i64,
            Window::Gcra { interval } => {
                (interval.as_millis() as i64 * self.limit as i64 + 999) / 1000
            }
        }
    }

    /// What a stored state means at `now_ms` (Unix milliseconds). A missing or lapsed state
    /// is a fresh window: everything remains, and it would reset one window after now.
    pub fn status(&self, state: Option<&str>, now_ms: i64) -> QuotaStatus {
        let now = now_ms.div_euclid(1000);
        match self.window {
            Window::Gcra { interval } => {
                let interval_ms = interval.as_millis().max(1) as i64;
                let tat = state
                    .and_then(|s| s.parse::<i64>().ok())
                    .unwrap_or(now_ms)
                    .max(now_ms);
                let capacity_ms = interval_ms * self.limit as i64;
                let remaining = ((capacity_ms - (tat - now_ms)) / interval_ms).max(0) as u64;
                QuotaStatus {
                    limit: self.limit,
                    remaining: remaining.min(self.limit),
                    reset_at: (tat as u64).div_ceil(1000) as i64,
                }
            }
            Window::Calendar(_) | Window::Rolling(_) => {
                let live = state
                    .and_then(parse_fixed_state)
                    .filter(|(end, _)| now < *end);
                match live {
                    Some((end, used)) => QuotaStatus {
                        limit: self.limit,
                        remaining: self.limit.saturating_sub(used),
                        reset_at: end,
                    },
                    None => QuotaStatus {
                        limit: self.limit,
                        remaining: self.limit,
                        reset_at: self.fresh_window_end(now),
                    },
                }
            }
        }
    }

    fn fresh_window_end(&self, now: i64) -> i64 {
        match self.window {
            Window::Calendar(unit) => calendar_end(unit, now),
            Window::Rolling(length) => now + length.as_secs() as i64,
            Window::Gcra { .. } => now,
        }
    }
}

/// A calendar or rolling window state: `(end, used)`.
pub fn parse_fixed_state(state: &str) -> Option<(i64, u64)> {
    let (end, used) = state.split_once(':')?;
    Some((end.parse().ok()?, used.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .single()
            .expect("valid date")
            .timestamp()
    }

    #[test]
    fn month_windows_end_at_the_next_month_whatever_its_length() {
        let month = |t| calendar_end(CalendarUnit::Month, t);
        assert_eq!(month(at(2026, 1, 31, 23, 59, 59)), at(2026, 2, 1, 0, 0, 0));
        assert_eq!(month(at(2026, 2, 28, 12, 0, 0)), at(2026, 3, 1, 0, 0, 0));
        assert_eq!(
            month(at(2028, 2, 29, 23, 59, 59)),
            at(2028, 3, 1, 0, 0, 0),
            "leap year"
        );
        assert_eq!(
            month(at(2100, 2, 28, 0, 0, 0)),
            at(2100, 3, 1, 0, 0, 0),
            "2100 is not leap"
        );
        assert_eq!(
            month(at(2000, 2, 29, 0, 0, 0)),
            at(2000, 3, 1, 0, 0, 0),
            "2000 is leap"
        );
        assert_eq!(month(at(2026, 4, 30, 23, 59, 59)), at(2026, 5, 1, 0, 0, 0));
        assert_eq!(
            month(at(2026, 12, 31, 23, 59, 59)),
            at(2027, 1, 1, 0, 0, 0),
            "year end"
        );
        // The instant of reset belongs to the next window.
        assert_eq!(month(at(2026, 3, 1, 0, 0, 0)), at(2026, 4, 1, 0, 0, 0));
        assert_eq!(month(at(2026, 2, 28, 23, 59, 59)), at(2026, 3, 1, 0, 0, 0));
    }

    #[test]
    fn short_calendar_windows() {
        let t = at(2026, 12, 31, 23, 59, 59);
        assert_eq!(
            calendar_end(CalendarUnit::Minute, t),
            at(2027, 1, 1, 0, 0, 0)
        );
        assert_eq!(calendar_end(CalendarUnit::Hour, t), at(2027, 1, 1, 0, 0, 0));
        assert_eq!(calendar_end(CalendarUnit::Day, t), at(2027, 1, 1, 0, 0, 0));
        let t = at(2026, 6, 15, 10, 0, 0);
        assert_eq!(
            calendar_end(CalendarUnit::Hour, t),
            at(2026, 6, 15, 11, 0, 0)
        );
        assert_eq!(
            calendar_end(CalendarUnit::Minute, t),
            at(2026, 6, 15, 10, 1, 0)
        );
    }

    #[test]
    fn windows_parse() {
        assert_eq!(
            parse_window("month"),
            Ok(Window::Calendar(CalendarUnit::Month))
        );
        assert_eq!(
            parse_window("24 hours"),
            Ok(Window::Rolling(Duration::from_secs(86_400)))
        );
        assert_eq!(
            parse_window("1 day"),
            Ok(Window::Rolling(Duration::from_secs(86_400)))
        );
        assert_eq!(
            parse_window("90 seconds"),
            Ok(Window::Rolling(Duration::from_secs(90)))
        );
        assert!(parse_window("fortnight").is_err());
        assert!(parse_window("0 hours").is_err());
        assert!(parse_window("-1 hours").is_err());
        assert!(parse_window("400 days").is_err());
    }

    #[test]
    fn fixed_window_status() {
        let policy = &Policy::defaults()[0].allowance;
        let now = at(2026, 11, 27, 12, 0, 0);
        let end = at(2026, 12, 1, 0, 0, 0);
        let fresh = policy.status(None, now * 1000);
        assert_eq!(
            fresh,
            QuotaStatus {
                limit: 10,
                remaining: 10,
                reset_at: end
            }
        );
        let state = format!("{end}:4");
        assert_eq!(policy.status(Some(&state), now * 1000).remaining, 6);
        // At the instant of reset the window has lapsed.
        let lapsed = policy.status(Some(&state), end * 1000);
        assert_eq!(lapsed.remaining, 10);
        assert_eq!(lapsed.reset_at, at(2027, 1, 1, 0, 0, 0));

        let rolling = &Policy::defaults()[1].allowance;
        assert_eq!(rolling.status(None, now * 1000).reset_at, now + 86_400);
    }

    #[test]
    fn gcra_status() {
        let interval = Duration::from_millis(200);
        let policy = Policy::new("burst", 5, Window::Gcra { interval }).allowance;
        let now_ms = 1_000_000;
        assert_eq!(policy.status(None, now_ms).remaining, 5);
        // Three tokens spent just now: the bucket is full again 600 ms later.
        let tat = (now_ms + 600).to_string();
        let status = policy.status(Some(&tat), now_ms);
        assert_eq!((status.remaining, status.reset_at), (2, 1001));
        assert_eq!(policy.window_secs(0), 1);
    }

    #[test]
    fn month_window_length_follows_the_calendar() {
        let policy = &Policy::defaults()[0].allowance;
        assert_eq!(policy.window_secs(at(2026, 2, 10, 0, 0, 0)), 28 * 86_400);
        assert_eq!(policy.window_secs(at(2028, 2, 10, 0, 0, 0)), 29 * 86_400);
        assert_eq!(policy.window_secs(at(2026, 1, 31, 23, 0, 0)), 31 * 86_400);
        assert_eq!(policy.window_secs(at(2026, 4, 1, 0, 0, 0)), 30 * 86_400);
    }

    #[test]
    fn plans_override_the_allowance_they_name() {
        let mut policy = Policy::defaults().remove(0);
        let pro = Allowance {
            limit: 100,
            ..policy.allowance
        };
        policy.plans.push((Arc::from("pro"), pro));
        assert_eq!(policy.allowance_on(Some("pro")).limit, 100);
        assert_eq!(
            policy.allowance_on(Some("free")).limit,
            10,
            "not overridden"
        );
        assert_eq!(policy.allowance_on(None).limit, 10);
        assert_eq!(policy.largest_limit(), 100);
    }

    #[test]
    fn counter_names() {
        for good in ["concepts_generated", "a", "x9_", &"a".repeat(63)] {
            assert!(is_counter_name(good), "{good}");
        }
        for bad in ["", "9a", "_a", "A", "a-b", "a.b", "é", &"a".repeat(64)] {
            assert!(!is_counter_name(bad), "{bad}");
        }
    }

    #[test]
    fn counters_come_once_in_policy_order() {
        let mut policies = Policy::defaults();
        policies[2].counter = policies[0].counter.clone();
        policies.push(Policy {
            counter: Some(Arc::from("images_rendered")),
            ..policies[1].clone()
        });
        let names: Vec<String> = counters(&policies).iter().map(|n| n.to_string()).collect();
        assert_eq!(
            names,
            ["concepts_generated", "concepts_refined", "images_rendered"]
        );
    }
}
