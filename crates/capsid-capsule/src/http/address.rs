//! Which addresses an outbound request may reach without naming them: public ones only.
//! Everything inside the host's own networks (loopback, private, link-local, unique-local,
//! CGNAT, multicast, cloud metadata, unspecified and reserved ranges) needs a grant that
//! names the address literally, or `localhost` for loopback.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The kind of internal address `ip` is, or `None` for a public address.
pub(crate) fn internal_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        // 169.254.169.254 and its neighbours: the cloud metadata services live here.
        _ if ip.is_link_local() => "link-local (cloud metadata)",
        (100, 64..=127, _) => "shared address space (CGNAT)",
        // Azure's platform endpoint: public space, but a metadata service all the same.
        (168, 63, 129) if ip.octets()[3] == 16 => "cloud metadata",
        _ if ip.is_multicast() || ip.is_broadcast() => "multicast",
        (0, _, _) => "unspecified",
        // IETF protocol assignments, documentation, benchmarking, future use.
        (192, 0, 0 | 2)
        | (198, 51, 100)
        | (203, 0, 113)
        | (198, 18 | 19, _)
        | (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // Addresses that carry an IPv4 address reach it: judge that one.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    let s = ip.segments();
    if let [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] = s {
        return internal_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    if s[0] == 0x2002 {
        return internal_v4(Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2])));
    }
    if let [0x64, 0xff9b, 1, ..] = s {
        return Some("local-use NAT64");
    }
    Some(match s[0] {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        0xfc00..=0xfdff => "unique-local",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xff00..=0xffff => "multicast",
        // IPv4-compatible (deprecated), discard-only, documentation.
        0 | 0x100 => "reserved",
        0x2001 if s[1] == 0x0db8 => "reserved",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::internal_kind;

    fn kind(s: &str) -> Option<&'static str> {
        internal_kind(s.parse().unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    #[test]
    fn internal_ranges_are_named_and_public_ones_pass() {
        for (addr, want) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.5.4", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local (cloud metadata)"),
            ("100.100.100.200", "shared address space (CGNAT)"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("240.0.0.1", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00:ec2::254", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:127.0.0.1", "loopback"),
            ("64:ff9b::a00:1", "private"),
            ("2002:a00:1::", "private"),
            ("2001:db8::1", "reserved"),
            ("64:ff9b:1::a00:1", "local-use NAT64"),
            ("168.63.129.16", "cloud metadata"),
        ] {
            assert_eq!(kind(addr), Some(want), "{addr}");
        }
        for public in [
            "1.1.1.1",
            "140.82.112.3",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(kind(public), None, "{public}");
        }
    }
}
