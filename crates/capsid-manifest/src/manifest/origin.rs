//! `[capabilities] http`: the origins a capsule asks to send HTTP requests to, as
//! `net://<scheme>/<host>/<port>` patterns, and the one spelling of that resource the
//! runtime checks each request against ([`net_resource`]).

/// The `net://` resource of one origin (`net://https/api.github.com/443`). `host` is
/// lowercase, an IPv6 address in brackets (`[::1]`).
pub fn net_resource(scheme: &str, host: &str, port: &str) -> String {
    format!("net://{scheme}/{host}/{port}")
}

/// The pattern an origin in a manifest asks for: `https://api.github.com` →
/// `net://https/api.github.com/443`, `https://*.example.com:8443` →
/// `net://https/*.example.com/8443`. The scheme must be `http` or `https`; no user, path
/// (beyond a lone `/`), query or fragment; `*` may stand for any run of characters in the
/// host or for any port. Names are case-insensitive and come out lowercase.
pub(super) fn origin_pattern(origin: &str) -> Result<String, &'static str> {
    let (scheme, rest) = origin
        .split_once("://")
        .ok_or("expected an origin such as \"https://api.example.com\"")?;
    let (scheme, default_port) = match scheme {
        "https" => ("https", "443"),
        "http" => ("http", "80"),
        _ => return Err("the scheme must be http or https"),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err("an origin has no path, query or fragment");
    }
    if authority.contains('@') {
        return Err("an origin has no user name or password");
    }
    let (host, port) = split_host_port(authority)?;
    let port = match port {
        None => default_port.to_owned(),
        Some("*") => "*".to_owned(),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && !p.starts_with('0') => n.to_string(),
            _ => return Err("the port must be a number from 1 to 65535, or *"),
        },
    };
    Ok(net_resource(scheme, &host, &port))
}

/// The host (lowercase; IPv6 kept in brackets) and port text of `authority`.
fn split_host_port(authority: &str) -> Result<(String, Option<&str>), &'static str> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ']'")?;
        let addr: std::net::Ipv6Addr = addr
            .parse()
            .map_err(|_| "not an IPv6 address between '[' and ']'")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected :port after ']'")?),
        };
        // The one spelling the runtime checks requests against (`[::1]`, never `[0::1]`).
        return Ok((format!("[{addr}]"), port));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let host = host.to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.*".contains(&b))
        && host.split('.').all(|label| !label.is_empty());
    if !valid {
        return Err("the host must be a name (letters, digits, '-', '.', '*') or an IP address");
    }
    // `127.1` or `2130706433` would be looked up as names and never match a request for the
    // address they spell: a numeric host must be a dotted-quad IPv4 address.
    let numeric = host
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
    if numeric && host.parse::<std::net::Ipv4Addr>().is_err() {
        return Err("a numeric host must be a dotted-quad IPv4 address (127.0.0.1)");
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::origin_pattern;

    #[test]
    fn origins_become_net_patterns_with_default_ports() {
        let ok = |o: &str| origin_pattern(o).unwrap_or_else(|e| panic!("{o}: {e}"));
        assert_eq!(
            ok("https://api.github.com"),
            "net://https/api.github.com/443"
        );
        assert_eq!(
            ok("https://API.GitHub.com/"),
            "net://https/api.github.com/443"
        );
        assert_eq!(ok("http://127.0.0.1:8080"), "net://http/127.0.0.1/8080");
        assert_eq!(
            ok("https://*.example.com:8443"),
            "net://https/*.example.com/8443"
        );
        assert_eq!(ok("http://localhost:*"), "net://http/localhost/*");
        assert_eq!(ok("http://[::1]:9000"), "net://http/[::1]/9000");
        assert_eq!(ok("http://[0:0::1]:9000"), "net://http/[::1]/9000");
        assert_eq!(ok("http://[FD00::1]"), "net://http/[fd00::1]/80");
        assert_eq!(ok("http://example.com"), "net://http/example.com/80");
    }

    #[test]
    fn anything_but_an_origin_is_refused() {
        for bad in [
            "api.github.com",
            "ftp://example.com",
            "HTTPS://example.com",
            "https://example.com/path",
            "https://example.com?q=1",
            "https://user@example.com",
            "https://example.com:0",
            "https://example.com:65536",
            "https://example.com:08",
            "https://",
            "https://a..b",
            "https://ex ample.com",
            "https://exa%6dple.com",
            "http://[::1",
            "http://[nope]:80",
            "http://[::1]80",
            "http://127.1:8080",
            "http://2130706433",
            "http://127.000.000.001",
        ] {
            assert!(origin_pattern(bad).is_err(), "{bad} was accepted");
        }
    }
}
