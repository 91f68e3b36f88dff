//! The Redis engine: limits that hold across replicas. Every check-and-reserve is one Lua
//! script ([`RESERVE`]), run with EVALSHA (redis-rs falls back to EVAL once after a Redis
//! restart forgot it), so no two replicas can both see the last free slot. Settlement is a
//! second script ([`SETTLE`]).
//!
//! Keys are hash-tagged by tenant (`tg:q:{ten_...}:...`): all the keys one script touches
//! hash to one slot, so it runs unchanged on Redis Cluster.
//!
//! - `...:t` is the tenant scope, `...:k:<key id>` the key scope; under each,
//!   `r:<window>` and `t:<window>` count requests and tokens of a one-minute window (they
//!   expire with it), `c` counts requests in flight, `m:<yyyymm>` is a hash of the month's
//!   `cost` / `tokens` spent (present once `seeded` from the ledger) and `rcost` / `rtok`
//!   reserved.
//! - The in-flight counter and the month hash expire when idle (15 min, 40 days), so a
//!   replica that dies holding reservations leaks them for at most that long (a request
//!   running longer than 15 min with no other reservation meanwhile lets the in-flight
//!   count restart at 0: a brief undercount, never a lockout).

use redis::Script;

use super::engine::{Ask, Counts, Decision, Limit, Scope, ScopeLimits, Taken, WINDOW_MS};
use crate::redis::{Redis, RedisError};

/// The error counter's label for this component.
const COMPONENT: &str = "limits";
/// In-flight counters expire this long after their last reservation.
const CONCURRENT_TTL_S: i64 = 900;
/// Month hashes expire this long after their last reservation.
const MONTH_TTL_S: i64 = 40 * 86_400;

/// KEYS: per scope (tenant, key) 4 keys: requests, tokens, in flight, month.
/// ARGV: per scope 5 limits (rpm, tpm, concurrent, budget, monthly tokens; -1 = none),
/// then tokens, cost, window ttl ms, in-flight ttl s, month ttl s.
/// Returns {0, r0, t0, r1, t1} (counts after admission), {1, scope, limit, r, t}, or
/// {2, scope} when the month's spend must be seeded first.
const RESERVE: &str = r"
local tokens = tonumber(ARGV[11])
local cost = tonumber(ARGV[12])
local counts = {0, 0, 0, 0}
for s = 0, 1 do
  local k = s * 4
  local a = s * 5
  local rpm, tpm, conc = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local budget, mtok = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5])
  local r = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
  local t = tonumber(redis.call('GET', KEYS[k + 2]) or '0')
  if rpm >= 0 and r + 1 > rpm then return {1, s, 1, r, t} end
  if tpm >= 0 and t + tokens > tpm then return {1, s, 2, r, t} end
  if conc >= 0 and tonumber(redis.call('GET', KEYS[k + 3]) or '0') + 1 > conc then
    return {1, s, 3, r, t}
  end
  if budget >= 0 or mtok >= 0 then
    local m = redis.call('HMGET', KEYS[k + 4], 'seeded', 'cost', 'tokens', 'rcost', 'rtok')
    if not m[1] then return {2, s} end
    if budget >= 0 and tonumber(m[2] or '0') + tonumber(m[4] or '0') >= budget then
      return {1, s, 4, r, t}
    end
    if mtok >= 0 and tonumber(m[3] or '0') + tonumber(m[5] or '0') >= mtok then
      return {1, s, 5, r, t}
    end
  end
  counts[s * 2 + 1] = r + 1
  counts[s * 2 + 2] = t + tokens
end
for s = 0, 1 do
  local k = s * 4
  local a = s * 5
  if tonumber(ARGV[a + 1]) >= 0 then
    if redis.call('INCR', KEYS[k + 1]) == 1 then redis.call('PEXPIRE', KEYS[k + 1], ARGV[13]) end
  end
  if tonumber(ARGV[a + 2]) >= 0 then
    redis.call('INCRBY', KEYS[k + 2], tokens)
    if redis.call('PTTL', KEYS[k + 2]) < 0 then redis.call('PEXPIRE', KEYS[k + 2], ARGV[13]) end
  end
  if tonumber(ARGV[a + 3]) >= 0 then
    redis.call('INCR', KEYS[k + 3])
    redis.call('EXPIRE', KEYS[k + 3], ARGV[14])
  end
  if tonumber(ARGV[a + 4]) >= 0 or tonumber(ARGV[a + 5]) >= 0 then
    redis.call('HINCRBY', KEYS[k + 4], 'rcost', cost)
    redis.call('HINCRBY', KEYS[k + 4], 'rtok', tokens)
    redis.call('EXPIRE', KEYS[k + 4], ARGV[15])
  end
end
return {0, counts[1], counts[2], counts[3], counts[4]}
";

/// KEYS: as [`RESERVE`]. ARGV: per scope 3 flags (tokens, in flight, month touched), then
/// reserved tokens, reserved cost, used tokens, used cost.
const SETTLE: &str = r"
local rtok, rcost = tonumber(ARGV[7]), tonumber(ARGV[8])
local utok, ucost = tonumber(ARGV[9]), tonumber(ARGV[10])
for s = 0, 1 do
  local k = s * 4
  local a = s * 3
  if ARGV[a + 1] == '1' and redis.call('EXISTS', KEYS[k + 2]) == 1 then
    redis.call('INCRBY', KEYS[k + 2], utok - rtok)
  end
  if ARGV[a + 2] == '1' then
    if redis.call('DECR', KEYS[k + 3]) <= 0 then redis.call('DEL', KEYS[k + 3]) end
  end
  if ARGV[a + 3] == '1' then
    redis.call('HINCRBY', KEYS[k + 4], 'rcost', -rcost)
    redis.call('HINCRBY', KEYS[k + 4], 'rtok', -rtok)
  end
  if redis.call('HEXISTS', KEYS[k + 4], 'seeded') == 1 then
    redis.call('HINCRBY', KEYS[k + 4], 'cost', ucost)
    redis.call('HINCRBY', KEYS[k + 4], 'tokens', utok)
  end
end
return 1
";

/// KEYS: the two month hashes (tenant, key). ARGV: per scope 3 values (touched flag,
/// budget, monthly tokens; -1 = none), then tokens, cost. Reserves more for a running
/// request while each touched scope has something left: 1, else 0.
const EXTEND: &str = r"
for s = 0, 1 do
  local a = s * 3
  if ARGV[a + 1] == '1' then
    local budget, mtok = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local m = redis.call('HMGET', KEYS[s + 1], 'cost', 'tokens', 'rcost', 'rtok')
    if budget >= 0 and tonumber(m[1] or '0') + tonumber(m[3] or '0') >= budget then return 0 end
    if mtok >= 0 and tonumber(m[2] or '0') + tonumber(m[4] or '0') >= mtok then return 0 end
  end
end
for s = 0, 1 do
  if ARGV[s * 3 + 1] == '1' then
    redis.call('HINCRBY', KEYS[s + 1], 'rcost', ARGV[8])
    redis.call('HINCRBY', KEYS[s + 1], 'rtok', ARGV[7])
  end
end
return 1
";

/// KEYS: a month hash. ARGV: cost, tokens, ttl s. Sets the spend once.
const SEED: &str = r"
if redis.call('HSETNX', KEYS[1], 'seeded', 1) == 1 then
  redis.call('HINCRBY', KEYS[1], 'cost', ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
";

pub struct RedisEngine {
    redis: Redis,
    reserve: Script,
    settle: Script,
    seed: Script,
    extend: Script,
}

/// The key prefix of one scope.
fn prefix(tenant: &str, key: &str, scope: Scope) -> String {
    match scope {
        Scope::Tenant => format!("tg:q:{{{tenant}}}:t"),
        Scope::Key => format!("tg:q:{{{tenant}}}:k:{key}"),
    }
}

/// The 8 keys of both scopes.
fn keys(tenant: &str, key: &str, window: i64, month: u32) -> [String; 8] {
    let t = prefix(tenant, key, Scope::Tenant);
    let k = prefix(tenant, key, Scope::Key);
    [
        format!("{t}:r:{window}"),
        format!("{t}:t:{window}"),
        format!("{t}:c"),
        format!("{t}:m:{month}"),
        format!("{k}:r:{window}"),
        format!("{k}:t:{window}"),
        format!("{k}:c"),
        format!("{k}:m:{month}"),
    ]
}

fn opt<T: TryInto<i64>>(v: Option<T>) -> i64 {
    v.and_then(|v| v.try_into().ok()).unwrap_or(-1)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl RedisEngine {
    pub fn new(redis: Redis) -> Self {
        Self {
            redis,
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            seed: Script::new(SEED),
            extend: Script::new(EXTEND),
        }
    }

    pub async fn reserve(&self, ask: &Ask) -> Result<Decision, RedisError> {
        let window = ask.window();
        let mut invocation = self.reserve.prepare_invoke();
        for k in keys(&ask.tenant, &ask.key, window, ask.month().0) {
            invocation.key(k);
        }
        for l in &ask.limits {
            invocation
                .arg(opt(l.rpm))
                .arg(opt(l.tpm))
                .arg(opt(l.concurrent))
                .arg(opt(l.budget))
                .arg(opt(l.monthly_tokens));
        }
        let window_left = (window + 1) * WINDOW_MS - ask.now_ms + 1000;
        invocation
            .arg(i64::try_from(ask.tokens).unwrap_or(i64::MAX))
            .arg(ask.cost)
            .arg(window_left)
            .arg(CONCURRENT_TTL_S)
            .arg(MONTH_TTL_S);
        let reply: Vec<i64> = self
            .redis
            .call(COMPONENT, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(match reply.as_slice() {
            [0, r0, t0, r1, t1] => Decision::Admit(Counts {
                requests: [to_u64(*r0), to_u64(*r1)],
                tokens: [to_u64(*t0), to_u64(*t1)],
            }),
            [1, s, l, r, t] => Decision::Reject {
                scope: Scope::from_index(*s),
                limit: Limit::from_code(*l).unwrap_or(Limit::Requests),
                counts: Counts {
                    requests: [to_u64(*r); 2],
                    tokens: [to_u64(*t); 2],
                },
            },
            [2, s] => Decision::Unseeded(Scope::from_index(*s)),
            other => {
                return Err(RedisError::Redis(redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "unexpected reply from the limits script",
                    format!("{other:?}"),
                ))));
            }
        })
    }

    pub async fn seed(
        &self,
        ask: &Ask,
        scope: Scope,
        cost: i64,
        tokens: u64,
    ) -> Result<(), RedisError> {
        let all = keys(&ask.tenant, &ask.key, ask.window(), ask.month().0);
        let month_key = all[scope as usize * 4 + 3].clone();
        let mut invocation = self.seed.prepare_invoke();
        invocation
            .key(month_key)
            .arg(cost)
            .arg(i64::try_from(tokens).unwrap_or(i64::MAX))
            .arg(MONTH_TTL_S);
        let _: i64 = self
            .redis
            .call(COMPONENT, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(())
    }

    /// See [`EXTEND`].
    pub async fn extend(
        &self,
        taken: &Taken,
        limits: &[ScopeLimits; 2],
        tokens: u64,
        cost: i64,
    ) -> Result<bool, RedisError> {
        let all = keys(&taken.tenant, &taken.key, taken.window, taken.month.0);
        let mut invocation = self.extend.prepare_invoke();
        invocation.key(&all[3]).key(&all[7]);
        for (t, l) in taken.touched.iter().zip(limits) {
            invocation
                .arg(i64::from(t.monthly))
                .arg(opt(l.budget))
                .arg(opt(l.monthly_tokens));
        }
        invocation
            .arg(i64::try_from(tokens).unwrap_or(i64::MAX))
            .arg(cost);
        let granted: i64 = self
            .redis
            .call(COMPONENT, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(granted == 1)
    }

    pub async fn settle(&self, taken: &Taken, tokens: u64, cost: i64) -> Result<(), RedisError> {
        let mut invocation = self.settle.prepare_invoke();
        for k in keys(&taken.tenant, &taken.key, taken.window, taken.month.0) {
            invocation.key(k);
        }
        let flag = |b: bool| if b { 1 } else { 0 };
        for t in &taken.touched {
            invocation
                .arg(flag(t.tokens))
                .arg(flag(t.concurrent))
                .arg(flag(t.monthly));
        }
        invocation
            .arg(i64::try_from(taken.tokens).unwrap_or(i64::MAX))
            .arg(taken.cost)
            .arg(i64::try_from(tokens).unwrap_or(i64::MAX))
            .arg(cost);
        let _: i64 = self
            .redis
            .call(COMPONENT, |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        Ok(())
    }
}
