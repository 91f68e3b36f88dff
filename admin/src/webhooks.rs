//! Webhook rules shared by the admin API (at creation) and the gateway's deliverer (at
//! each delivery): which URLs may receive events (SSRF), and how a body is signed.
//!
//! A URL passes when it is `http`/`https`, has a host, and every address the host
//! resolves to is public: no loopback, link-local, private (RFC 1918, ULA), unspecified,
//! broadcast, multicast or documentation address, unless `allow_private` (config
//! `webhooks.allow_private_targets`). Checked again at delivery, and the delivery connects
//! to the addresses checked, so a DNS answer that changes later cannot redirect it.

use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

/// Whether events may go to loopback and private addresses (the gateway's
/// `webhooks.allow_private_targets`). A request extension of the admin router; absent =
/// refused.
#[derive(Clone, Copy, Debug, Default)]
pub struct WebhookPolicy {
    pub allow_private_targets: bool,
}

/// Why a URL is refused: a message for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UrlRefused(pub String);

/// Parses `url` and resolves its host; returns the host and the addresses to connect to.
pub async fn check_url(
    url: &str,
    allow_private: bool,
) -> Result<(String, Vec<SocketAddr>), UrlRefused> {
    let parsed: http::Uri = url
        .parse()
        .map_err(|_| UrlRefused("url is not a valid absolute URL".to_owned()))?;
    let port = match parsed.scheme_str() {
        Some("https") => parsed.port_u16().unwrap_or(443),
        Some("http") => parsed.port_u16().unwrap_or(80),
        _ => {
            return Err(UrlRefused(
                "url must start with http:// or https://".to_owned(),
            ));
        }
    };
    let host = parsed
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| UrlRefused("url has no host".to_owned()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| UrlRefused(format!("url: host {host:?} does not resolve")))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(UrlRefused(format!("url: host {host:?} does not resolve")));
    }
    if !allow_private && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(UrlRefused(format!(
            "url resolves to a non-public address ({}); set webhooks.allow_private_targets to allow it",
            bad.ip()
        )));
    }
    Ok((host, addrs))
}

/// A globally routable address (what a webhook may reach by default).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xC0) == 64) // 100.64/10, shared address space
                || (o[0] == 198 && (o[1] & 0xFE) == 18)) // 198.18/15, benchmarking
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80) // link-local
        }
    }
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The `tollgate-signature` header's value for `body` sent at unix second `t`:
/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mac = hmac_sha256(secret.as_bytes(), format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn private_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "100.64.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        assert!(is_public("8.8.8.8".parse().unwrap()));
        assert!(is_public("2606:4700::1111".parse().unwrap()));
    }

    #[tokio::test]
    async fn urls_are_checked() {
        assert!(check_url("http://127.0.0.1:9/x", false).await.is_err());
        assert!(check_url("http://[::1]:9/x", false).await.is_err());
        assert!(check_url("http://localhost:9/x", false).await.is_err());
        assert!(check_url("ftp://8.8.8.8/", false).await.is_err());
        assert!(check_url("http://127.0.0.1:9/x", true).await.is_ok());
        assert!(check_url("https://8.8.8.8/hook", false).await.is_ok());
    }
}
