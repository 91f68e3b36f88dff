//! What both engines share: the question ([`Ask`]), the answer ([`Decision`]), what an
//! admitted request holds until it settles ([`Taken`]), and the windows.
//!
//! One behaviour, two engines ([`super::local`], [`super::redis`]):
//!
//! - `rpm` / `tpm` count in fixed one-minute windows aligned to the unix epoch (the
//!   window of `now_ms / 60 000`); a request is admitted when the window's requests + 1
//!   and tokens + its reservation stay within the limit.
//! - `max_concurrent` counts requests in flight; refused at the limit, never queued.
//! - Monthly budgets (micro-USD) and monthly tokens count per calendar month (UTC):
//!   spent (seeded from the ledger, then kept up by settlements) + reserved. A request is
//!   admitted while spent + reserved is below the limit, so concurrent requests overshoot
//!   by at most one reservation.
//! - Every check covers both scopes (the tenant's plan, the key's own limits) and is
//!   all-or-nothing: a request refused by either scope takes nothing from the other.

use std::time::{SystemTime, UNIX_EPOCH};

/// The rpm/tpm window.
pub const WINDOW_MS: i64 = 60_000;

/// Which scope a limit belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The tenant's plan: all its keys together.
    Tenant = 0,
    /// The key's own limits.
    Key = 1,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::Tenant => "tenant",
            Scope::Key => "key",
        }
    }

    pub fn from_index(i: i64) -> Scope {
        if i == 1 { Scope::Key } else { Scope::Tenant }
    }
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Tokens,
    Concurrent,
    Budget,
    MonthlyTokens,
}

impl Limit {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Requests => "rpm",
            Limit::Tokens => "tpm",
            Limit::Concurrent => "max_concurrent",
            Limit::Budget => "monthly_budget_usd",
            Limit::MonthlyTokens => "monthly_tokens",
        }
    }

    /// The Lua script's number for it (1-based, as the script returns it).
    pub fn from_code(code: i64) -> Option<Limit> {
        Some(match code {
            1 => Limit::Requests,
            2 => Limit::Tokens,
            3 => Limit::Concurrent,
            4 => Limit::Budget,
            5 => Limit::MonthlyTokens,
            _ => return None,
        })
    }

    /// Budgets are `insufficient_quota`; rates and concurrency `rate_limit_exceeded`.
    pub fn is_quota(self) -> bool {
        matches!(self, Limit::Budget | Limit::MonthlyTokens)
    }
}

/// One scope's limits; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub concurrent: Option<u64>,
    /// Micro-USD per month.
    pub budget: Option<i64>,
    pub monthly_tokens: Option<u64>,
}

impl ScopeLimits {
    pub fn is_unlimited(&self) -> bool {
        *self == ScopeLimits::default()
    }

    /// Whether the month's spend must be known.
    pub fn has_monthly(&self) -> bool {
        self.budget.is_some() || self.monthly_tokens.is_some()
    }
}

/// One check-and-reserve.
#[derive(Clone, Debug)]
pub struct Ask {
    pub tenant: String,
    pub key: String,
    /// Indexed by [`Scope`].
    pub limits: [ScopeLimits; 2],
    /// Tokens reserved (prompt + most output).
    pub tokens: u64,
    /// Micro-USD reserved.
    pub cost: i64,
    pub now_ms: i64,
}

impl Ask {
    pub fn window(&self) -> i64 {
        self.now_ms.div_euclid(WINDOW_MS)
    }

    pub fn month(&self) -> Month {
        Month::of(self.now_ms)
    }
}

/// Counts in the current window after an admission (this request included), per scope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: [u64; 2],
    pub tokens: [u64; 2],
}

/// An engine's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Admit(Counts),
    /// Refused by `limit` of `scope`; `counts` are the window's counts (not incremented).
    Reject {
        scope: Scope,
        limit: Limit,
        counts: Counts,
    },
    /// The month's spend of `scope` is not known to the engine yet: seed it, ask again.
    Unseeded(Scope),
}

/// What an admitted request took, to settle when it ends.
#[derive(Clone, Debug)]
pub struct Taken {
    pub tenant: String,
    pub key: String,
    pub window: i64,
    pub month: Month,
    pub tokens: u64,
    pub cost: i64,
    /// Per scope: what was counted (only limited counters are touched, so a limit set
    /// while the request runs cannot make its release go negative).
    pub touched: [Touched; 2],
}

/// Counters one scope's reservation touched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    pub tokens: bool,
    pub concurrent: bool,
    pub monthly: bool,
}

impl Taken {
    pub fn of(ask: &Ask) -> Taken {
        let touched = ask.limits.map(|l| Touched {
            tokens: l.tpm.is_some(),
            concurrent: l.concurrent.is_some(),
            monthly: l.has_monthly(),
        });
        Taken {
            tenant: ask.tenant.clone(),
            key: ask.key.clone(),
            window: ask.window(),
            month: ask.month(),
            tokens: ask.tokens,
            cost: ask.cost,
            touched,
        }
    }
}

/// A calendar month (UTC) as `yyyymm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Month(pub u32);

impl Month {
    pub fn of(unix_ms: i64) -> Month {
        let (y, m, _) = civil(unix_ms.div_euclid(86_400_000));
        Month(u32::try_from(y.max(0) * 100 + m).unwrap_or(0))
    }

    /// Its first millisecond.
    pub fn start_ms(self) -> i64 {
        let (y, m) = (i64::from(self.0 / 100), i64::from(self.0 % 100));
        days_from_civil(y, m, 1) * 86_400_000
    }

    /// The first millisecond of the next month.
    pub fn end_ms(self) -> i64 {
        let (y, m) = (i64::from(self.0 / 100), i64::from(self.0 % 100));
        let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        days_from_civil(y, m, 1) * 86_400_000
    }
}

/// Howard Hinnant's `civil_from_days`: (year, month, day) of a day count since 1970-01-01.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil`].
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months() {
        // 2026-11-25T19:50:00Z
        let t = 1_795_636_200_000;
        let m = Month::of(t);
        assert_eq!(m, Month(202611));
        assert_eq!(m.start_ms(), 1_793_491_200_000); // 2026-11-01
        assert_eq!(m.end_ms(), 1_796_083_200_000); // 2026-12-01
        assert_eq!(Month(202612).end_ms(), 1_798_761_600_000); // 2027-01-01
        assert_eq!(Month::of(0), Month(197001));
    }
}
