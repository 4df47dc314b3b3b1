//! How fast joins may begin: a token bucket for the whole hub and one per source address, pure
//! over an injected monotonic time. `BeginJoin` is the one call anyone may make without a
//! credential, and each writes a challenge row, so a flood is refused before it costs a write.

use std::collections::HashMap;
use std::net::IpAddr;

/// Sources tracked at once; past this, the fullest buckets (idle sources) are forgotten.
const MAX_SOURCES: usize = 4096;

/// A token bucket: `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    fn full(burst: f64, now_ms: u64) -> Self {
        Self {
            tokens: burst,
            at_ms: now_ms,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at_ms = now_ms;
    }

    /// Milliseconds until one token is there (0 when one is there now).
    fn wait_ms(&self, rate: f64) -> u64 {
        if self.tokens >= 1.0 {
            0
        } else {
            ((1.0 - self.tokens) / rate * 1000.0).ceil() as u64
        }
    }
}

/// The limits: joins begun per second, hub-wide and per source address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JoinRates {
    /// Hub-wide rate (joins a second); bursts of four seconds' worth pass.
    pub per_second: u32,
    /// Rate from one source address; bursts of four seconds' worth pass.
    pub per_source_per_second: u32,
}

/// A join refused for its rate, with when to try again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("too many joins {scope}: at most {rate} a second; try again in {retry_after_ms} ms")]
pub struct RateLimited {
    /// `hub-wide` or `from <address>`.
    pub scope: String,
    /// The rate in force.
    pub rate: u32,
    /// When a join would pass.
    pub retry_after_ms: u64,
}

/// The hub's join limiter.
#[derive(Debug)]
pub struct JoinLimiter {
    rates: JoinRates,
    global: Bucket,
    sources: HashMap<IpAddr, Bucket>,
}

fn burst(rate: u32) -> f64 {
    f64::from(rate.max(1)) * 4.0
}

impl JoinLimiter {
    /// A limiter at `rates`, every bucket full at `now_ms`.
    pub fn new(rates: JoinRates, now_ms: u64) -> Self {
        Self {
            rates,
            global: Bucket::full(burst(rates.per_second), now_ms),
            sources: HashMap::new(),
        }
    }

    /// Takes a token for a join from `source` at `now_ms`, or says how long to wait. A refused
    /// join takes nothing.
    pub fn admit(&mut self, source: Option<IpAddr>, now_ms: u64) -> Result<(), RateLimited> {
        let global_rate = f64::from(self.rates.per_second.max(1));
        let source_rate = f64::from(self.rates.per_source_per_second.max(1));
        let source_burst = burst(self.rates.per_source_per_second);
        self.global
            .refill(global_rate, burst(self.rates.per_second), now_ms);
        if self.sources.len() >= MAX_SOURCES {
            // Forget sources whose buckets have refilled (they would start full anyway).
            for bucket in self.sources.values_mut() {
                bucket.refill(source_rate, source_burst, now_ms);
            }
            self.sources.retain(|_, b| b.tokens < source_burst);
            if self.sources.len() >= MAX_SOURCES {
                self.sources.clear();
            }
        }
        let mut source_bucket = source.map(|ip| {
            let bucket = self
                .sources
                .entry(ip)
                .or_insert_with(|| Bucket::full(source_burst, now_ms));
            bucket.refill(source_rate, source_burst, now_ms);
            (ip, bucket)
        });
        if let Some((ip, bucket)) = &source_bucket {
            let wait = bucket.wait_ms(source_rate);
            if wait > 0 {
                return Err(RateLimited {
                    scope: format!("from {ip}"),
                    rate: self.rates.per_source_per_second,
                    retry_after_ms: wait,
                });
            }
        }
        let wait = self.global.wait_ms(global_rate);
        if wait > 0 {
            return Err(RateLimited {
                scope: "hub-wide".into(),
                rate: self.rates.per_second,
                retry_after_ms: wait,
            });
        }
        self.global.tokens -= 1.0;
        if let Some((_, bucket)) = &mut source_bucket {
            bucket.tokens -= 1.0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));

    fn limiter() -> JoinLimiter {
        JoinLimiter::new(
            JoinRates {
                per_second: 10,
                per_source_per_second: 2,
            },
            0,
        )
    }

    #[test]
    fn one_source_gets_its_burst_then_its_rate() {
        let mut l = limiter();
        for _ in 0..8 {
            l.admit(A, 0).unwrap();
        }
        let refused = l.admit(A, 0).unwrap_err();
        assert_eq!(refused.scope, "from 10.0.0.1");
        assert_eq!(refused.retry_after_ms, 500);
        // Another source is not held up by the first.
        l.admit(B, 0).unwrap();
        // Half a second later one more from A passes, and only one.
        l.admit(A, 500).unwrap();
        assert!(l.admit(A, 500).is_err());
    }

    #[test]
    fn the_hub_wide_bucket_caps_many_sources() {
        let mut l = limiter();
        let mut passed = 0;
        for i in 0..200u8 {
            let source = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, i)));
            if l.admit(source, 0).is_ok() {
                passed += 1;
            }
        }
        assert_eq!(passed, 40, "four seconds' worth at 10 a second");
        let refused = l.admit(None, 0).unwrap_err();
        assert_eq!(refused.scope, "hub-wide");
        assert_eq!(refused.retry_after_ms, 100);
        l.admit(None, 100).unwrap();
    }

    #[test]
    fn a_refused_join_takes_no_token_and_sources_stay_bounded() {
        let mut l = limiter();
        for _ in 0..8 {
            l.admit(A, 0).unwrap();
        }
        for _ in 0..100 {
            assert!(l.admit(A, 0).is_err());
        }
        // The refusals from A took nothing hub-wide: 32 remain for others.
        let passed = (0..64u8)
            .filter(|i| {
                l.admit(Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 2, 0, *i))), 0)
                    .is_ok()
            })
            .count();
        assert_eq!(passed, 32);
        for i in 0..(MAX_SOURCES as u32 * 2) {
            let _ = l.admit(Some(IpAddr::V4(std::net::Ipv4Addr::from(i))), 1_000_000);
        }
        assert!(l.sources.len() <= MAX_SOURCES);
    }
}
