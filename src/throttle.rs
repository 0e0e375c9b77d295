//! The session-creation throttle: how fast one client network, and this whole gateway
//! process, may create sessions. Every new session brings fresh quotas, so unthrottled
//! creation would turn any quota into "limit × sessions one can create".
//!
//! A client is keyed by its network, not its exact address: an IPv6 home connection gets a
//! whole /64, and rotating addresses inside it must not buy new allowances. The per-gateway
//! ceiling is the backstop for what per-network keys can't see (many networks, a botnet).
//! State lives in this process's memory (counted per replica); it never talks to Redis.
//! A configuration reload replaces the limits in place ([`CreationThrottle::reconfigure`]),
//! starting their counts afresh; a reload that leaves them as they were keeps the counts.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, NotUntil, Quota, RateLimiter};
use ipnet::IpNet;

/// The throttle's settings (`[session]` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Creations per client network and minute, and the burst allowed on top.
    pub per_minute: NonZeroU32,
    pub burst: NonZeroU32,
    /// How many leading bits of an address name its network.
    pub ipv4_prefix: u8,
    pub ipv6_prefix: u8,
    /// Creations per second across all clients of this gateway process (also the burst).
    pub max_per_second: NonZeroU32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            per_minute: NonZeroU32::new(600).unwrap_or(NonZeroU32::MIN),
            burst: NonZeroU32::new(120).unwrap_or(NonZeroU32::MIN),
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            max_per_second: NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN),
        }
    }
}

/// Allows or refuses one creation at a time.
pub struct CreationThrottle {
    limits: ArcSwap<Limits>,
}

/// The limiters of one configuration.
struct Limits {
    config: ThrottleConfig,
    per_network: DefaultKeyedRateLimiter<IpAddr>,
    overall: DefaultDirectRateLimiter,
}

impl Limits {
    fn new(config: &ThrottleConfig) -> Limits {
        Limits {
            config: *config,
            per_network: RateLimiter::keyed(
                Quota::per_minute(config.per_minute).allow_burst(config.burst),
            ),
            overall: RateLimiter::direct(Quota::per_second(config.max_per_second)),
        }
    }

    /// The first address of `client`'s network: the throttle's key.
    fn network(&self, client: IpAddr) -> IpAddr {
        let client = client.to_canonical();
        let prefix = match client {
            IpAddr::V4(_) => self.config.ipv4_prefix.min(32),
            IpAddr::V6(_) => self.config.ipv6_prefix.min(128),
        };
        IpNet::new(client, prefix).map_or(client, |net| net.network())
    }
}

impl CreationThrottle {
    pub fn new(config: &ThrottleConfig) -> Self {
        CreationThrottle {
            limits: ArcSwap::from_pointee(Limits::new(config)),
        }
    }

    /// Applies `config` to the creations that come after, unless it is the one in force.
    pub fn reconfigure(&self, config: &ThrottleConfig) {
        if self.limits.load().config != *config {
            self.limits.store(Arc::new(Limits::new(config)));
        }
    }

    /// `Err(wait)` when a creation from `client` must wait `wait` first.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let limits = self.limits.load();
        // The limiter's own clock, read only on refusal: building a clock runs CPUID, which
        // a virtual machine traps (it was an eighth of the CPU of session creation).
        let wait = |not_until: NotUntil<_>| not_until.wait_time_from(limits.overall.clock().now());
        limits
            .per_network
            .check_key(&limits.network(client))
            .map_err(wait)?;
        limits.overall.check().map_err(wait)
    }

    /// Drops the state of networks whose allowance is full again, so the table stays as
    /// small as the set of recently active clients.
    pub fn forget_idle(&self) {
        let limits = self.limits.load();
        limits.per_network.retain_recent();
        limits.per_network.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(burst: u32, max_per_second: u32) -> CreationThrottle {
        CreationThrottle::new(&ThrottleConfig {
            per_minute: NonZeroU32::MIN,
            burst: NonZeroU32::new(burst).expect("nonzero"),
            max_per_second: NonZeroU32::new(max_per_second).expect("nonzero"),
            ..ThrottleConfig::default()
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn an_ipv6_slash_64_is_one_client() {
        let throttle = throttle(2, 1000);
        assert!(throttle.check(ip("2001:db8:1:2::1")).is_ok());
        assert!(throttle.check(ip("2001:db8:1:2:ffff::9")).is_ok());
        assert!(throttle.check(ip("2001:db8:1:2:abcd::7")).is_err());
        assert!(throttle.check(ip("2001:db8:1:3::1")).is_ok(), "another /64");
    }

    #[test]
    fn ipv4_addresses_are_their_own_network_by_default() {
        let throttle = throttle(1, 1000);
        assert!(throttle.check(ip("192.0.2.1")).is_ok());
        assert!(throttle.check(ip("192.0.2.1")).is_err());
        assert!(throttle.check(ip("192.0.2.2")).is_ok());
        assert!(
            throttle.check(ip("::ffff:192.0.2.2")).is_err(),
            "a mapped address is the same client"
        );
    }

    #[test]
    fn a_new_configuration_applies_at_once_and_the_same_one_keeps_the_counts() {
        let throttle = throttle(1, 1000);
        assert!(throttle.check(ip("192.0.2.1")).is_ok());
        let same = throttle.limits.load().config;
        throttle.reconfigure(&same);
        assert!(throttle.check(ip("192.0.2.1")).is_err(), "counts kept");
        throttle.reconfigure(&ThrottleConfig {
            burst: NonZeroU32::new(3).expect("nonzero"),
            ..same
        });
        assert!(throttle.check(ip("192.0.2.1")).is_ok(), "the new burst");
    }

    #[test]
    fn the_gateway_ceiling_holds_across_networks() {
        let throttle = throttle(100, 3);
        let granted = (1..=10)
            .filter(|i| throttle.check(ip(&format!("198.51.100.{i}"))).is_ok())
            .count();
        assert_eq!(granted, 3);
    }
}
