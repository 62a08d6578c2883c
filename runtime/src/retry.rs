//! Retry delay math: exponential or fixed backoff with full jitter. The jitter sample is
//! passed in (a number in [0,1)) so the function stays pure; the chosen time is recorded in
//! the `step_failed` event, so replay never recomputes it.

use crate::plan::{Backoff, RetryPolicy};

pub const DEFAULT_INITIAL_MS: u64 = 200;
pub const DEFAULT_MAX_MS: u64 = 60_000;

/// Delay before attempt `attempt + 1`, after `attempt` (1-based) failed.
pub fn backoff_ms(policy: &RetryPolicy, attempt: u32, jitter01: f64) -> u64 {
    let initial = policy
        .initial
        .as_ref()
        .map(|d| d.as_millis())
        .unwrap_or(DEFAULT_INITIAL_MS);
    let max = policy
        .max
        .as_ref()
        .map(|d| d.as_millis())
        .unwrap_or(DEFAULT_MAX_MS)
        .max(initial);
    let base = match policy.backoff {
        Backoff::Fixed => initial,
        Backoff::Exponential => initial
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(30))
            .min(max),
    };
    // Equal jitter: half fixed, half random, so retries spread without collapsing to zero.
    let j = jitter01.clamp(0.0, 1.0);
    base / 2 + ((base / 2) as f64 * j) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let p = RetryPolicy {
            max_attempts: 10,
            ..Default::default()
        };
        assert_eq!(backoff_ms(&p, 1, 1.0), 200);
        assert_eq!(backoff_ms(&p, 2, 1.0), 400);
        assert_eq!(backoff_ms(&p, 3, 0.0), 400);
        assert_eq!(backoff_ms(&p, 40, 1.0), DEFAULT_MAX_MS);
    }
}
