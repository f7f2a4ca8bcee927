//! Shared-key signing for the Azure store: a service SAS signed with the
//! account key (the new SDK has no shared-key credential), cutting
//! signatures out of messages, and the account an endpoint names.

use chrono::{DateTime, Utc};
use url::Url;

/// The SAS version signed: the first whose string-to-sign has the
/// encryption-scope line (16 lines), and that knows `x` (delete version).
pub(super) const SAS_VERSION: &str = "2021-08-06";

/// A service SAS signed with the account key, for `resource` (the
/// container, or `container/blob`) of type `sr` (`c`, or `bs` with the
/// snapshot time `snapshot`): no start time (a service whose clock runs
/// behind would refuse it), no IP or protocol restriction.
pub(super) fn sign_sas(
    account: &str,
    resource: &str,
    sr: &str,
    permissions: &str,
    snapshot: &str,
    key: &[u8],
    expiry: DateTime<Utc>,
) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let se = expiry.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let canonical = format!("/blob/{account}/{resource}");
    // sp, st, se, resource, si, sip, spr, sv, sr, snapshot time, ses,
    // rscc, rscd, rsce, rscl, rsct: the layout of versions 2020-12-06+.
    let to_sign = [
        permissions,
        "",
        &se,
        &canonical,
        "",
        "",
        "",
        SAS_VERSION,
        sr,
        snapshot,
        "",
        "",
        "",
        "",
        "",
        "",
    ]
    .join("\n");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(to_sign.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    url::form_urlencoded::Serializer::new(String::new())
        .append_pair("sv", SAS_VERSION)
        .append_pair("sr", sr)
        .append_pair("sp", permissions)
        .append_pair("se", &se)
        .append_pair("sig", &sig)
        .finish()
}

/// Cuts the value of every `sig=` out of `text`.
pub(super) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("sig=") {
        out.push_str(&rest[..at + 4]);
        out.push_str("REDACTED");
        rest = &rest[at + 4..];
        let end = rest
            .find(|c: char| c == '&' || c == ')' || c == '"' || c.is_whitespace())
            .unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// The account an endpoint names: the first path segment of a path-style
/// URL (Azurite: `http://127.0.0.1:10000/devstoreaccount1`), else the first
/// host label of a `<account>.blob.<domain>` host; None when neither fits
/// (a custom domain).
pub(super) fn endpoint_account(endpoint: &Url) -> Option<String> {
    if let Some(first) = endpoint
        .path_segments()
        .and_then(|mut s| s.next())
        .filter(|s| !s.is_empty())
    {
        return Some(
            percent_encoding::percent_decode_str(first)
                .decode_utf8_lossy()
                .into_owned(),
        );
    }
    match endpoint.host()? {
        url::Host::Domain(host) if host.contains(".blob.") => {
            host.split('.').next().map(str::to_string)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sas_is_signed_over_the_16_line_layout() {
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
            .unwrap();
        let expiry = DateTime::parse_from_rfc3339("2026-11-23T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let sign = |container: &str| {
            sign_sas("devstoreaccount1", container, "c", "rdxl", "", &key, expiry)
        };
        let sas = sign("uploads");
        assert!(
            sas.starts_with("sv=2021-08-06&sr=c&sp=rdxl&se=2026-11-23T08%3A00%3A00Z&sig="),
            "{sas}"
        );
        assert!(!sas.contains("st="), "no start time");
        // Same inputs, same signature; another container, another one.
        assert_eq!(sas, sign("uploads"));
        assert_ne!(sas, sign("other"));
    }

    #[test]
    fn signatures_are_cut_from_messages() {
        assert_eq!(
            redact("error sending request for url (http://h/a/c?sv=1&sig=abc%2B%3D&sp=r)"),
            "error sending request for url (http://h/a/c?sv=1&sig=REDACTED&sp=r)"
        );
        assert_eq!(redact("x sig=abc"), "x sig=REDACTED");
        assert_eq!(redact("nothing here"), "nothing here");
    }

    #[test]
    fn endpoint_names_its_account() {
        let account = |u: &str| endpoint_account(&Url::parse(u).unwrap());
        assert_eq!(
            account("https://prodlogs.blob.core.windows.net").as_deref(),
            Some("prodlogs")
        );
        assert_eq!(
            account("https://prodlogs.privatelink.blob.core.windows.net/").as_deref(),
            Some("prodlogs")
        );
        assert_eq!(
            account("http://127.0.0.1:10000/devstoreaccount1").as_deref(),
            Some("devstoreaccount1")
        );
        assert_eq!(account("https://cdn.contoso.com"), None);
    }
}
