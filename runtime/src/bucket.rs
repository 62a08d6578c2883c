//! Token buckets: the arithmetic of every rate limit (job admission, tool calls per
//! second, LLM tokens per minute). Pure: time is passed in, so limits are testable
//! exactly. A bucket may be driven into debt by reservations (`reserve`), which makes
//! later callers wait their turn in order instead of racing.

#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    /// Tokens added per second.
    pub rate_per_s: f64,
    /// Most tokens the bucket holds (the burst).
    pub burst: f64,
    tokens: f64,
    last_ms: i64,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_s: f64, burst: f64, now_ms: i64) -> Self {
        let burst = burst.max(1.0);
        TokenBucket {
            rate_per_s: rate_per_s.max(0.0),
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: i64) {
        if now_ms > self.last_ms {
            let add = (now_ms - self.last_ms) as f64 / 1000.0 * self.rate_per_s;
            self.tokens = (self.tokens + add).min(self.burst);
            self.last_ms = now_ms;
        }
    }

    /// Takes `n` tokens now, or says how many ms until they would be there (taking none).
    pub fn try_take(&mut self, n: f64, now_ms: i64) -> Result<(), u64> {
        self.refill(now_ms);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(self.wait_ms(n))
        }
    }

    /// Takes `n` tokens, going into debt if needed, and returns how long the caller must
    /// wait (ms) before using them. Callers are served in the order they reserve.
    pub fn reserve(&mut self, n: f64, now_ms: i64) -> u64 {
        self.refill(now_ms);
        let wait = if self.tokens >= n { 0 } else { self.wait_ms(n) };
        self.tokens -= n;
        wait
    }

    /// Changes the rate and burst from `now_ms` on (this process's share of a global limit
    /// changed): tokens earned so far are kept up to the new burst, and debt stays debt,
    /// so callers already waiting are not overtaken by new ones.
    pub fn rescale(&mut self, rate_per_s: f64, burst: f64, now_ms: i64) {
        self.refill(now_ms);
        self.rate_per_s = rate_per_s.max(0.0);
        self.burst = burst.max(1.0);
        self.tokens = self.tokens.min(self.burst);
    }

    /// Returns unused tokens of a reservation (e.g. an LLM call used fewer than reserved).
    pub fn give_back(&mut self, n: f64) {
        self.tokens = (self.tokens + n.max(0.0)).min(self.burst);
    }

    fn wait_ms(&self, n: f64) -> u64 {
        if self.rate_per_s <= 0.0 {
            return u64::MAX;
        }
        (((n - self.tokens) / self.rate_per_s) * 1000.0)
            .ceil()
            .max(1.0) as u64
    }

    pub fn available(&mut self, now_ms: i64) -> f64 {
        self.refill(now_ms);
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_its_rate_up_to_the_burst() {
        let mut b = TokenBucket::new(10.0, 5.0, 0);
        for _ in 0..5 {
            assert!(b.try_take(1.0, 0).is_ok());
        }
        assert_eq!(b.try_take(1.0, 0), Err(100));
        assert!(b.try_take(1.0, 100).is_ok());
        assert_eq!(b.available(10_000), 5.0, "never above the burst");
    }

    #[test]
    fn reservations_queue_in_order() {
        let mut b = TokenBucket::new(10.0, 1.0, 0);
        assert_eq!(b.reserve(1.0, 0), 0);
        assert_eq!(b.reserve(1.0, 0), 100);
        assert_eq!(b.reserve(1.0, 0), 200);
        b.give_back(1.0);
        assert_eq!(b.reserve(1.0, 0), 200);
    }

    #[test]
    fn a_rescaled_bucket_keeps_its_debt_and_refills_at_the_new_rate() {
        let mut b = TokenBucket::new(10.0, 10.0, 0);
        assert_eq!(b.reserve(12.0, 0), 200, "two tokens of debt");
        b.rescale(5.0, 5.0, 0);
        assert_eq!(b.reserve(1.0, 0), 600, "3 tokens short at 5/s");
        b.rescale(20.0, 20.0, 0);
        assert_eq!(b.available(1_000), 17.0, "-3 plus one second at 20/s");
        b.rescale(20.0, 4.0, 1_000);
        assert_eq!(b.available(1_000), 4.0, "never above the new burst");
    }

    #[test]
    fn a_zero_rate_never_refills() {
        let mut b = TokenBucket::new(0.0, 1.0, 0);
        assert!(b.try_take(1.0, 0).is_ok());
        assert_eq!(b.try_take(1.0, 1_000_000), Err(u64::MAX));
    }
}
