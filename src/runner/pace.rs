//! Where the guest's clock comes from while the runner runs it.
//!
//! Normally the devices are paced by host time since boot. While the recorder
//! single-steps the guest under the software branch counter (`--clock soft`), host
//! time would make a guest that runs at a few ten thousand instructions per second
//! see its timers fire every few hundred instructions — it would do little but take
//! interrupts. Then time is *counted*, as QEMU's `-icount` does: every stepped
//! instruction advances the guest's clock by [`NS_PER_STEP`]; a free run or a wait
//! with serial input possible advances it by the host time it took; a halted guest
//! that only a timer can wake skips straight to that timer's deadline.
//!
//! Replay never reads this clock: every value the guest saw is in the log.

use std::time::{Duration, Instant};

/// Guest nanoseconds per single-stepped instruction when time is counted: the guest
/// sees a processor of 200,000 instructions per second.
pub const NS_PER_STEP: u64 = 5_000;

/// The guest's clock.
#[derive(Debug, Clone, Copy)]
pub(super) enum GuestTime {
    /// Host time since `start`, plus what was skipped.
    Host {
        /// Boot.
        start: Instant,
        /// Guest time skipped while the guest waited in a loop for a timer.
        skipped_ns: u64,
    },
    /// Counted time (see the module docs).
    Counted {
        /// Guest nanoseconds since boot.
        ns: u64,
    },
}

impl GuestTime {
    /// Guest nanoseconds since boot.
    pub(super) fn now_ns(&self) -> u64 {
        match self {
            GuestTime::Host { start, skipped_ns } => {
                (start.elapsed().as_nanos() as u64).saturating_add(*skipped_ns)
            }
            GuestTime::Counted { ns } => *ns,
        }
    }

    /// Whether [`GuestTime::entered`] needs the host time an entry took.
    pub(super) fn measures_entry(&self, single_step: bool) -> bool {
        matches!(self, GuestTime::Counted { .. }) && !single_step
    }

    /// Accounts for one entry of the guest that took `took` of host time.
    pub(super) fn entered(&mut self, single_step: bool, took: Duration) {
        if let GuestTime::Counted { ns } = self {
            *ns += if single_step {
                NS_PER_STEP
            } else {
                took.as_nanos() as u64
            };
        }
    }

    /// Accounts for a wait of the halted guest that took `took`, toward a timer
    /// deadline `deadline_ns` if there is one.
    pub(super) fn waited(&mut self, took: Duration, deadline_ns: Option<u64>) {
        if let GuestTime::Counted { ns } = self {
            let after = *ns + took.as_nanos() as u64;
            *ns = deadline_ns.map_or(after, |deadline| after.min(deadline.max(*ns)));
        }
    }

    /// Whether a halted guest that only a timer can wake may skip to its deadline.
    pub(super) fn warps(&self) -> bool {
        matches!(self, GuestTime::Counted { .. })
    }

    /// Moves counted time to `deadline_ns` (never backwards).
    pub(super) fn warp_to(&mut self, deadline_ns: u64) {
        if let GuestTime::Counted { ns } = self {
            *ns = (*ns).max(deadline_ns);
        }
    }

    /// Moves the clock on to `deadline_ns` (never backwards), whichever kind it is:
    /// the guest waits for that deadline and nothing else can happen before it.
    /// Returns the nanoseconds skipped.
    pub(super) fn skip_to(&mut self, deadline_ns: u64) -> u64 {
        let skipped = deadline_ns.saturating_sub(self.now_ns());
        match self {
            GuestTime::Host { skipped_ns, .. } => *skipped_ns += skipped,
            GuestTime::Counted { ns } => *ns += skipped,
        }
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_time_follows_steps_runs_and_warps() {
        let mut time = GuestTime::Counted { ns: 0 };
        time.entered(true, Duration::from_millis(5));
        assert_eq!(time.now_ns(), NS_PER_STEP);
        time.entered(false, Duration::from_micros(3));
        assert_eq!(time.now_ns(), NS_PER_STEP + 3_000);
        time.warp_to(1_000_000);
        assert_eq!(time.now_ns(), 1_000_000);
        time.warp_to(10);
        assert_eq!(time.now_ns(), 1_000_000);
        // A wait cut short by input, then one that reached its deadline.
        time.waited(Duration::from_micros(100), Some(2_000_000));
        assert_eq!(time.now_ns(), 1_100_000);
        time.waited(Duration::from_secs(1), Some(2_000_000));
        assert_eq!(time.now_ns(), 2_000_000);
    }

    #[test]
    fn host_time_ignores_the_accounting() {
        let mut time = GuestTime::Host {
            start: Instant::now(),
            skipped_ns: 0,
        };
        time.entered(true, Duration::from_secs(100));
        time.warp_to(u64::MAX);
        assert!(time.now_ns() < Duration::from_secs(100).as_nanos() as u64);
        assert!(!time.warps());
    }

    #[test]
    fn skipping_moves_either_clock_on_and_never_back() {
        let mut host = GuestTime::Host {
            start: Instant::now(),
            skipped_ns: 0,
        };
        let before = host.now_ns();
        let skipped = host.skip_to(before + 50_000_000);
        assert!(skipped > 0 && skipped <= 50_000_000);
        assert!(host.now_ns() >= before + 50_000_000);
        assert_eq!(host.skip_to(0), 0);
        let mut counted = GuestTime::Counted { ns: 1_000 };
        assert_eq!(counted.skip_to(5_000), 4_000);
        assert_eq!(counted.now_ns(), 5_000);
        assert_eq!(counted.skip_to(10), 0);
        assert_eq!(counted.now_ns(), 5_000);
    }
}
