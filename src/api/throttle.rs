//! Limits how many wrong admin tokens one client address may try: without it the token
//! could be guessed at the speed of the network. A fixed one-minute window per address,
//! in memory, with a bounded number of addresses (so a flood of spoofed or rotating
//! addresses cannot grow it without limit).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The window in which failures are counted.
const WINDOW: Duration = Duration::from_secs(60);
/// Most addresses remembered at once; when full, expired windows are dropped first,
/// then the oldest window.
const MAX_ADDRESSES: usize = 4096;

/// Failure counts per client address.
#[derive(Debug)]
pub struct AuthThrottle {
    /// Failures allowed per address per window.
    limit: u32,
    /// Per address: when its window began and how many failures it holds.
    windows: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthThrottle {
    /// A throttle allowing `limit` failures per address per minute.
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `address` used up its failures in the current window.
    pub fn is_blocked(&self, address: IpAddr) -> bool {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows
            .get(&address)
            .is_some_and(|(start, count)| start.elapsed() < WINDOW && *count >= self.limit)
    }

    /// Counts a failed authentication of `address`.
    pub fn record_failure(&self, address: IpAddr) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if !windows.contains_key(&address) && windows.len() >= MAX_ADDRESSES {
            make_room(&mut windows);
        }
        let now = Instant::now();
        let entry = windows.entry(address).or_insert((now, 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// How many addresses are remembered (for the memory-bound test).
    pub fn tracked(&self) -> usize {
        self.windows.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

fn make_room(windows: &mut HashMap<IpAddr, (Instant, u32)>) {
    windows.retain(|_, (start, _)| start.elapsed() < WINDOW);
    if windows.len() >= MAX_ADDRESSES
        && let Some(oldest) = windows
            .iter()
            .min_by_key(|(_, (start, _))| *start)
            .map(|(address, _)| *address)
    {
        windows.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_limit_and_others_are_not() {
        let throttle = AuthThrottle::new(3);
        let guesser: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..3 {
            assert!(!throttle.is_blocked(guesser));
            throttle.record_failure(guesser);
        }
        assert!(throttle.is_blocked(guesser));
        assert!(!throttle.is_blocked("10.0.0.2".parse().expect("ip")));
    }

    #[test]
    fn memory_is_bounded_whatever_the_number_of_addresses() {
        let throttle = AuthThrottle::new(1);
        for n in 0..(MAX_ADDRESSES as u32 + 500) {
            throttle.record_failure(IpAddr::from(n.to_be_bytes()));
        }
        assert_eq!(throttle.tracked(), MAX_ADDRESSES);
    }
}
