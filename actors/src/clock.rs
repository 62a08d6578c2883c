//! The worker's local wall clock: milliseconds since the Unix epoch, the one definition
//! every actor and rate limiter reads. Local on purpose: events are stamped by the store's
//! clock, and a job actor learns the offset to it from each append (see job/drive.rs); this
//! clock only schedules this process's own timers and token buckets. (runtime/ stays
//! clock-free: its functions take the time as an argument.)

/// Now, in ms since the Unix epoch (0 if the system clock is before it).
pub fn local_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_is_past_2024_and_does_not_go_back_between_reads() {
        let a = super::local_ms();
        let b = super::local_ms();
        assert!(a > 1_704_067_200_000, "{a}");
        assert!(b >= a);
    }
}
