//! Which IP addresses an image fetch may connect to: only globally routable ones.
//!
//! This is the address half of the SSRF rule (`fetch.rs` applies it to every literal and every
//! DNS answer). It is a pure function of the address, written out here rather than taken from
//! `std`, whose `is_global` is unstable. It refuses rather than guesses: a range is public only
//! if it is unicast space that the whole internet can route to. IPv6 forms that carry an IPv4
//! address (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are judged by the address they carry,
//! because that is where a connection to them may end up.
//!
//! Sources: the IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890 and updates).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Whether a fetch may connect to `ip` without the operator allowing it.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// Whether an IPv4 address is globally routable unicast.
pub fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = match a {
        // 0.0.0.0/8 "this network", including the unspecified address.
        0 => true,
        // 10.0.0.0/8 private (RFC 1918).
        10 => true,
        // 100.64.0.0/10 shared address space (carrier-grade NAT).
        100 => b & 0xC0 == 64,
        // 127.0.0.0/8 loopback.
        127 => true,
        // 169.254.0.0/16 link-local, where cloud metadata services live.
        169 => b == 254,
        // 172.16.0.0/12 private (RFC 1918).
        172 => b & 0xF0 == 16,
        // 192.0.0.0/24 IETF protocol assignments, 192.0.2.0/24 documentation (TEST-NET-1),
        // 192.88.99.0/24 the deprecated 6to4 relay anycast, 192.168.0.0/16 private.
        192 => (b == 0 && (c == 0 || c == 2)) || (b == 88 && c == 99) || b == 168,
        // 198.18.0.0/15 benchmarking, 198.51.100.0/24 documentation (TEST-NET-2).
        198 => b & 0xFE == 18 || (b == 51 && c == 100),
        // 203.0.113.0/24 documentation (TEST-NET-3).
        203 => b == 0 && c == 113,
        // 224.0.0.0/4 multicast, 240.0.0.0/4 reserved, 255.255.255.255 broadcast.
        224..=255 => true,
        _ => false,
    };
    !refused
}

/// Whether an IPv6 address is globally routable unicast, judging embedded IPv4 addresses by
/// [`is_public_v4`].
pub fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = embedded_v4(ip) {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // Everything outside 2000::/3, the global unicast space, is refused: this covers the
    // unspecified and loopback addresses, the rest of ::/8, discard-only 100::/64,
    // 64:ff9b:1::/48 (local-use NAT64), unique-local fc00::/7, link-local fe80::/10,
    // site-local fec0::/10, multicast ff00::/8 and all unassigned space.
    if s[0] & 0xE000 != 0x2000 {
        return false;
    }
    let refused = match s {
        // 2001::/23 IETF protocol assignments: Teredo 2001::/32, benchmarking 2001:2::/48,
        // ORCHID 2001:10::/28 and ORCHIDv2 2001:20::/28 among them. None of it serves
        // images. And 2001:db8::/32, documentation.
        [0x2001, second, ..] => second < 0x0200 || second == 0x0DB8,
        // 3fff::/20 documentation (RFC 9637).
        [0x3FFF, second, ..] => second < 0x1000,
        _ => false,
    };
    !refused
}

/// The IPv4 address an IPv6 address stands for, when it is of a form that carries one:
/// IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96` (deprecated, but still an IPv4
/// address in disguise), NAT64 `64:ff9b::/96` and 6to4 `2002::/16` (address in bits 16..48).
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    match s {
        [0, 0, 0, 0, 0, 0xFFFF, hi, lo] => Some(low(hi, lo)),
        [0, 0, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x0064, 0xFF9B, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn refused(addrs: &[&str]) {
        for a in addrs {
            let ip: IpAddr = a.parse().unwrap();
            assert!(!is_public(ip), "{a} must be refused");
        }
    }

    #[track_caller]
    fn public(addrs: &[&str]) {
        for a in addrs {
            let ip: IpAddr = a.parse().unwrap();
            assert!(is_public(ip), "{a} must be public");
        }
    }

    #[test]
    fn well_known_public_addresses_are_public() {
        public(&[
            "8.8.8.8",
            "1.1.1.1",
            "9.9.9.9",
            "2606:4700::1111",
            "2a00:1450::1",
            "2001:4860:4860::8888",
        ]);
    }

    #[test]
    fn v4_this_network_and_unspecified() {
        refused(&["0.0.0.0", "0.0.0.1", "0.1.2.3", "0.255.255.255"]);
        public(&["1.0.0.0"]);
    }

    #[test]
    fn v4_loopback() {
        refused(&["127.0.0.0", "127.0.0.1", "127.1.2.3", "127.255.255.255"]);
        public(&["126.255.255.255", "128.0.0.0"]);
    }

    #[test]
    fn v4_rfc1918() {
        refused(&["10.0.0.0", "10.0.0.1", "10.200.3.4", "10.255.255.255"]);
        refused(&["172.16.0.0", "172.20.1.1", "172.31.255.255"]);
        refused(&["192.168.0.0", "192.168.1.1", "192.168.255.255"]);
        public(&["9.255.255.255", "11.0.0.0", "172.15.255.255", "172.32.0.0"]);
        public(&["192.167.255.255", "192.169.0.0"]);
    }

    #[test]
    fn v4_cgnat() {
        refused(&[
            "100.64.0.0",
            "100.64.0.1",
            "100.100.100.100",
            "100.127.255.255",
        ]);
        public(&["100.63.255.255", "100.128.0.0"]);
    }

    #[test]
    fn v4_link_local_and_metadata() {
        refused(&["169.254.0.0", "169.254.169.254", "169.254.255.255"]);
        public(&["169.253.255.255", "169.255.0.0"]);
    }

    #[test]
    fn v4_ietf_and_documentation() {
        refused(&["192.0.0.0", "192.0.0.8", "192.0.0.255"]);
        refused(&["192.0.2.0", "192.0.2.1", "192.0.2.255"]);
        refused(&["198.51.100.0", "198.51.100.7", "198.51.100.255"]);
        refused(&["203.0.113.0", "203.0.113.9", "203.0.113.255"]);
        refused(&["192.88.99.0", "192.88.99.1", "192.88.99.255"]);
        public(&["192.0.1.255", "192.0.3.0", "198.51.99.255", "198.51.101.0"]);
        public(&[
            "203.0.112.255",
            "203.0.114.0",
            "192.88.98.255",
            "192.88.100.0",
        ]);
    }

    #[test]
    fn v4_benchmarking() {
        refused(&["198.18.0.0", "198.18.5.5", "198.19.255.255"]);
        public(&["198.17.255.255", "198.20.0.0"]);
    }

    #[test]
    fn v4_multicast_reserved_broadcast() {
        refused(&["224.0.0.0", "224.0.0.1", "239.255.255.255"]);
        refused(&[
            "240.0.0.0",
            "250.1.2.3",
            "255.255.255.254",
            "255.255.255.255",
        ]);
        public(&["223.255.255.255"]);
    }

    #[test]
    fn v6_unspecified_loopback_and_outside_global_unicast() {
        refused(&[
            "::",
            "::1",
            "1::",
            "1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]);
        refused(&["4000::", "5f00::1", "e000::"]);
        public(&["2000::1", "3ffe:ffff::1"]);
    }

    #[test]
    fn v6_discard() {
        refused(&["100::", "100::1", "100::ffff:ffff:ffff:ffff"]);
    }

    #[test]
    fn v6_unique_local_link_local_site_local_multicast() {
        refused(&[
            "fc00::",
            "fc00::1",
            "fd12:3456::1",
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]);
        refused(&[
            "fe80::",
            "fe80::1",
            "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]);
        refused(&[
            "fec0::",
            "fec0::1",
            "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]);
        refused(&[
            "ff00::",
            "ff02::1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]);
    }

    #[test]
    fn v6_documentation() {
        refused(&[
            "2001:db8::",
            "2001:db8::1",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
        ]);
        refused(&[
            "3fff::",
            "3fff::1",
            "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]);
        public(&["2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::"]);
        public(&["3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "3fff:1000::"]);
    }

    #[test]
    fn v6_ietf_protocol_assignments() {
        // Teredo.
        refused(&["2001::", "2001::1", "2001:0:ffff:ffff:ffff:ffff:ffff:ffff"]);
        // Benchmarking.
        refused(&["2001:2::", "2001:2::1", "2001:2:0:ffff:ffff:ffff:ffff:ffff"]);
        // ORCHID and ORCHIDv2.
        refused(&[
            "2001:10::",
            "2001:15::1",
            "2001:1f:ffff:ffff:ffff:ffff:ffff:ffff",
        ]);
        refused(&[
            "2001:20::",
            "2001:25::1",
            "2001:2f:ffff:ffff:ffff:ffff:ffff:ffff",
        ]);
        // The whole 2001::/23 block, first and last.
        refused(&["2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff"]);
        public(&["2001:200::", "2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]);
    }

    #[test]
    fn v6_ipv4_mapped_is_judged_by_the_v4_address() {
        refused(&["::ffff:0.0.0.0", "::ffff:127.0.0.1", "::ffff:10.0.0.1"]);
        refused(&["::ffff:169.254.169.254", "::ffff:255.255.255.255"]);
        public(&["::ffff:8.8.8.8", "::ffff:1.1.1.1"]);
    }

    #[test]
    fn v6_ipv4_compatible_is_judged_by_the_v4_address() {
        refused(&[
            "::127.0.0.1",
            "::10.0.0.1",
            "::0.0.0.2",
            "::255.255.255.255",
        ]);
        public(&["::8.8.8.8"]);
    }

    #[test]
    fn v6_nat64_is_judged_by_the_v4_address() {
        refused(&[
            "64:ff9b::",
            "64:ff9b::7f00:1",
            "64:ff9b::a00:1",
            "64:ff9b::ffff:ffff",
        ]);
        refused(&["64:ff9b::169.254.169.254"]);
        public(&["64:ff9b::8.8.8.8", "64:ff9b::101:101"]);
        // Local-use NAT64 and the rest of 64:ff9b::/32 are not global.
        refused(&[
            "64:ff9b:1::",
            "64:ff9b:1::808:808",
            "64:ff9b:1:ffff:ffff:ffff:ffff:ffff",
        ]);
        refused(&["64:ff9b:0:0:1::808:808"]);
    }

    #[test]
    fn v6_6to4_is_judged_by_the_v4_address() {
        refused(&["2002::", "2002:7f00:1::", "2002:7f00:1::1", "2002:a00:1::"]);
        refused(&[
            "2002:a9fe:a9fe::",
            "2002:c0a8:101::",
            "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ]);
        public(&[
            "2002:808:808::",
            "2002:808:808:ffff:ffff:ffff:ffff:ffff",
            "2002:101:101::1",
        ]);
    }

    #[test]
    fn embedded_v4_extraction() {
        let e = |s: &str| embedded_v4(s.parse().unwrap());
        assert_eq!(e("::ffff:1.2.3.4"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(e("::1.2.3.4"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(e("64:ff9b::1.2.3.4"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(e("2002:102:304::5"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(e("2606:4700::1111"), None);
    }
}
