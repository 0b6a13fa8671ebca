//! Which new connections the guard takes: counts in total and per source address, and a token
//! bucket per address. Pure: every call carries `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use crate::config::GuardConfig;
use crate::Rule;

#[derive(Debug)]
struct Source {
    open: usize,
    /// Tokens left in the bucket at `at`; one is spent per accepted connection.
    tokens: f64,
    at: Instant,
}

/// Open connections and recent arrivals, per source address.
#[derive(Debug)]
pub struct Admission {
    max_open: usize,
    max_per_address: usize,
    rate: f64,
    burst: f64,
    open: usize,
    sources: HashMap<IpAddr, Source>,
    /// Networks peers may come from; empty for any.
    allow_from: Vec<ipnet::IpNet>,
}

impl Admission {
    /// Admission under `config`'s connection limits.
    pub fn new(config: &GuardConfig) -> Self {
        Self {
            max_open: config.max_connections,
            max_per_address: config.max_connections_per_address,
            rate: f64::from(config.connection_rate),
            burst: 2.0 * f64::from(config.connection_rate),
            open: 0,
            sources: HashMap::new(),
            allow_from: config.allow_from.clone(),
        }
    }

    /// Takes a connection from `ip` arriving at `now`, or names the rule that refuses it. A
    /// connection taken must be given back with [`Admission::release`].
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Rule> {
        if !self.allow_from.is_empty() {
            let ip = ip.to_canonical();
            if !self.allow_from.iter().any(|network| network.contains(&ip)) {
                return Err(Rule::Network);
            }
        }
        if self.open >= self.max_open {
            return Err(Rule::MaxConnections);
        }
        self.forget_idle();
        let burst = self.burst;
        let source = self.sources.entry(ip).or_insert(Source {
            open: 0,
            tokens: burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(source.at).as_secs_f64();
        source.tokens = (source.tokens + elapsed * self.rate).min(self.burst);
        source.at = now;
        if source.open >= self.max_per_address {
            return Err(Rule::PerAddress);
        }
        if source.tokens < 1.0 {
            return Err(Rule::Rate);
        }
        source.tokens -= 1.0;
        source.open += 1;
        self.open += 1;
        Ok(())
    }

    /// Takes a connection on a Unix socket, which has no address: only the limit on connections
    /// open at once applies (who may connect at all is the socket file's permissions). Given
    /// back with [`Admission::release_local`].
    pub fn admit_local(&mut self) -> Result<(), Rule> {
        if self.open >= self.max_open {
            return Err(Rule::MaxConnections);
        }
        self.open += 1;
        Ok(())
    }

    /// Gives back a connection taken with [`Admission::admit_local`].
    pub fn release_local(&mut self) {
        self.open = self.open.saturating_sub(1);
    }

    /// Gives back a connection taken from `ip`.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(source) = self.sources.get_mut(&ip) {
            source.open = source.open.saturating_sub(1);
            self.open = self.open.saturating_sub(1);
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open
    }

    /// Addresses tracked (those with open connections and some without).
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Keeps the table bounded: addresses with nothing open are dropped once there are many. They
    /// lose their rate history, which only makes the guard more lenient towards them.
    fn forget_idle(&mut self) {
        if self.sources.len() > 2 * self.max_open + 1024 {
            self.sources.retain(|_, source| source.open > 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn only_the_allowed_networks_are_admitted_and_a_refusal_takes_no_room() {
        let networks = ["127.0.0.0/31", "10.0.0.0/8", "fd00::/8"].map(|n| n.parse().unwrap());
        let config = GuardConfig::default()
            .max_connections(2)
            .allow_from(networks);
        let mut admission = Admission::new(&config);
        let now = Instant::now();
        assert_eq!(admission.admit(ip(1), now), Ok(()));
        assert_eq!(admission.admit(ip(2), now), Err(Rule::Network));
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            admission.admit(mapped, now),
            Ok(()),
            "IPv4 through an IPv6 socket"
        );
        let outside: IpAddr = "::ffff:192.168.0.1".parse().unwrap();
        assert_eq!(admission.admit(outside, now), Err(Rule::Network));
        assert_eq!(admission.open(), 2);
        admission.release(ip(1));
        let v6: IpAddr = "fd12::1".parse().unwrap();
        assert_eq!(admission.admit(v6, now), Ok(()));
        // With no networks given, any address.
        let mut open = Admission::new(&GuardConfig::default());
        assert_eq!(open.admit(ip(2), now), Ok(()));
    }

    #[test]
    fn each_limit_refuses_with_its_rule_and_releases_restore_room() {
        let config = GuardConfig::default()
            .max_connections(4)
            .max_connections_per_address(2)
            .connection_rate(1000);
        let mut admission = Admission::new(&config);
        let now = Instant::now();
        assert_eq!(admission.admit(ip(1), now), Ok(()));
        assert_eq!(admission.admit(ip(1), now), Ok(()));
        assert_eq!(admission.admit(ip(1), now), Err(Rule::PerAddress));
        assert_eq!(admission.admit(ip(2), now), Ok(()));
        assert_eq!(admission.admit(ip(3), now), Ok(()));
        assert_eq!(admission.admit(ip(4), now), Err(Rule::MaxConnections));
        admission.release(ip(1));
        assert_eq!(admission.open(), 3);
        assert_eq!(admission.admit(ip(1), now), Ok(()));
        // Releasing what was never taken changes nothing.
        admission.release(ip(9));
        assert_eq!(admission.open(), 4);
    }

    #[test]
    fn local_connections_count_only_against_the_total() {
        let config = GuardConfig::default()
            .max_connections(3)
            .max_connections_per_address(1)
            .connection_rate(1);
        let mut admission = Admission::new(&config);
        assert_eq!(admission.admit_local(), Ok(()));
        assert_eq!(admission.admit_local(), Ok(()));
        assert_eq!(admission.admit(ip(1), Instant::now()), Ok(()));
        assert_eq!(admission.admit_local(), Err(Rule::MaxConnections));
        admission.release_local();
        assert_eq!(admission.open(), 2);
        assert_eq!(admission.admit_local(), Ok(()));
    }

    #[test]
    fn the_rate_allows_a_burst_then_refills_over_time() {
        let config = GuardConfig::default().connection_rate(10);
        let mut admission = Admission::new(&config);
        let start = Instant::now();
        for _ in 0..20 {
            assert_eq!(admission.admit(ip(1), start), Ok(()));
            admission.release(ip(1));
        }
        assert_eq!(admission.admit(ip(1), start), Err(Rule::Rate));
        // Another address has its own bucket.
        assert_eq!(admission.admit(ip(2), start), Ok(()));
        // A tenth of a second later one more token is there, and only one.
        let later = start + Duration::from_millis(100);
        assert_eq!(admission.admit(ip(1), later), Ok(()));
        assert_eq!(admission.admit(ip(1), later), Err(Rule::Rate));
    }

    #[test]
    fn the_table_stays_bounded_under_many_addresses() {
        let config = GuardConfig::default().max_connections(4);
        let mut admission = Admission::new(&config);
        let now = Instant::now();
        for n in 0..20_000u32 {
            let ip = IpAddr::from(n.to_be_bytes());
            admission.admit(ip, now).unwrap();
            admission.release(ip);
        }
        assert!(
            admission.tracked() <= 2 * 4 + 1024 + 1,
            "{}",
            admission.tracked()
        );
    }
}
