//! Client address: who a request comes from, for per-address limits and
//! logs. It believes a forwarding header only when configured to and only
//! from a peer in `server.trusted_proxies`; it never looks at anything but
//! that header and the socket peer.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::TrustedProxies;

/// The client's address: the socket peer, or — when ssemux sits behind a
/// proxy that appends the real client to `header` (nginx's
/// `proxy_add_x_forwarded_for`) — the rightmost address in the last such
/// header, which is the one the trusted proxy wrote. Left-hand entries are
/// client-supplied and ignored.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    header: &str,
    trusted: &TrustedProxies,
) -> IpAddr {
    if header.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    headers
        .get_all(header)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn client_ip_uses_the_rightmost_forwarded_address_only_when_configured() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6, 10.0.0.9".parse().expect("hv"));
        let trusted = TrustedProxies::parse("192.0.2.0/24").expect("trusted");
        assert_eq!(client_ip(ip(1), &h, "", &trusted), ip(1));
        assert_eq!(
            client_ip(ip(1), &h, "x-forwarded-for", &trusted),
            IpAddr::from([10, 0, 0, 9])
        );
        // From a peer not trusted, the header is the client's own claim.
        let nobody = TrustedProxies::default();
        assert_eq!(client_ip(ip(1), &h, "x-forwarded-for", &nobody), ip(1));
        h.append("x-forwarded-for", "garbage".parse().expect("hv"));
        assert_eq!(client_ip(ip(1), &h, "x-forwarded-for", &trusted), ip(1));
    }
}
