//! Blob Batch answers: a multipart/mixed body of one HTTP response per
//! sub-request, matched back to the items they answer.

/// The answers of a Blob Batch, by sub-request: status, error code and
/// message. Parts are matched by their Content-ID (or, when no part has
/// one, by position if there is one part per item); None for an item no
/// part answers.
pub(super) fn parse_batch(
    content_type: &str,
    body: &[u8],
    items: usize,
) -> Vec<Option<(u16, String, String)>> {
    let mut out: Vec<Option<(u16, String, String)>> = (0..items).map(|_| None).collect();
    let Some(boundary) = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"'))
    else {
        return out;
    };
    let body = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    let mut unnumbered = Vec::new();
    for part in body.split(delimiter.as_str()).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let Some((part_headers, response)) = part.trim_start_matches("\r\n").split_once("\r\n\r\n")
        else {
            continue;
        };
        let id = part_headers.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-id")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        });
        let (head, rest) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
        let mut lines = head.lines();
        let Some(status) = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse::<u16>().ok())
        else {
            continue;
        };
        let reason = head
            .lines()
            .next()
            .and_then(|l| l.splitn(3, ' ').nth(2))
            .unwrap_or_default()
            .to_string();
        let code = lines
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("x-ms-error-code")
                    .then(|| value.trim().to_string())
            })
            .unwrap_or_default();
        let message = rest
            .split_once("<Message>")
            .and_then(|(_, m)| m.split_once("</Message>"))
            .map(|(m, _)| m.lines().next().unwrap_or_default().trim().to_string())
            .unwrap_or(reason);
        match id {
            Some(id) if id < items => out[id] = Some((status, code, message)),
            Some(_) => {}
            None => unnumbered.push((status, code, message)),
        }
    }
    if out.iter().all(Option::is_none) && unnumbered.len() == items {
        out = unnumbered.into_iter().map(Some).collect();
    }
    out
}

/// A snapshot time or version id for a sub-request's query: as it is when
/// it is made of the characters those have (digits, letters, `-:.`), as
/// Azurite's batch handler does not percent-decode sub-request queries (an
/// encoded `:` names no snapshot: 404, which would pass for "gone").
pub(super) fn query_value(value: &str) -> String {
    if value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.'))
    {
        value.to_string()
    } else {
        url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_answers_are_matched_by_content_id() {
        // Azurite 3.35's answer to: delete bt/x, bt/missing, and frames/1.jpg
        // If-Unmodified-Since before it was written.
        let body = "--batch_test\r\nContent-Type: application/http\r\nContent-ID: 0\r\n\r\nHTTP/1.1 202 Accepted\r\nServer: Azurite-Blob/3.35.0\r\nx-ms-request-id: 463261b9-053e-4e6c-8f1f-9fb46ccb5c06\r\nx-ms-version: 2025-11-05\r\ndate: Mon, 23 Nov 2026 08:05:28 GMT\r\nx-ms-delete-type-permanent: true\r\n\r\n--batch_test\r\nContent-Type: application/http\r\nContent-ID: 1\r\n\r\nHTTP/1.1 404 The specified blob does not exist.\r\nServer: Azurite-Blob/3.35.0\r\nx-ms-error-code: BlobNotFound\r\nx-ms-request-id: dd6af923-6cdc-4396-92a7-1a5ac7d040dd\r\ncontent-type: application/xml\r\n\r\n<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Error>\n  <Code>BlobNotFound</Code>\n  <Message>The specified blob does not exist.\nRequestId:dd6af923-6cdc-4396-92a7-1a5ac7d040dd\nTime:2026-11-23T08:05:28.237Z</Message>\n</Error>\r\n\r\n--batch_test\r\nContent-Type: application/http\r\nContent-ID: 2\r\n\r\nHTTP/1.1 412 The condition specified using HTTP conditional header(s) is not met.\r\nServer: Azurite-Blob/3.35.0\r\nx-ms-error-code: ConditionNotMet\r\nx-ms-request-id: 2df329e0-67d7-41e2-8f6b-c4a52af8e6f5\r\ncontent-type: application/xml\r\n\r\n<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Error>\n  <Code>ConditionNotMet</Code>\n  <Message>The condition specified using HTTP conditional header(s) is not met.\nRequestId:2df329e0-67d7-41e2-8f6b-c4a52af8e6f5\nTime:2026-11-23T08:05:28.239Z</Message>\n</Error>\r\n\r\n--batch_test--";
        let parts = parse_batch("multipart/mixed; boundary=batch_test", body.as_bytes(), 3);
        let brief: Vec<_> = parts
            .iter()
            .map(|p| p.as_ref().map(|(s, c, m)| format!("{s} {c} {m}")))
            .collect();
        assert_eq!(
            brief,
            [
                Some("202  Accepted".to_string()),
                Some("404 BlobNotFound The specified blob does not exist.".to_string()),
                Some(
                    "412 ConditionNotMet The condition specified using HTTP conditional header(s) is not met."
                        .to_string()
                ),
            ]
        );
        // One unnumbered error for the whole batch answers no item.
        let whole = "--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 400 The batch operation exceeds maximum number of allowed subrequests.\r\nx-ms-error-code: ExceedsMaxBatchRequestCount\r\n\r\n--b--\r\n";
        assert_eq!(
            parse_batch("multipart/mixed; boundary=b", whole.as_bytes(), 2),
            vec![None, None]
        );
        assert_eq!(parse_batch("application/xml", b"", 1), vec![None]);
    }

    #[test]
    fn snapshot_times_go_into_queries_as_they_are() {
        assert_eq!(
            query_value("2026-11-23T08:01:57.9440000Z"),
            "2026-11-23T08:01:57.9440000Z"
        );
        assert_eq!(query_value("a+b/c"), "a%2Bb%2Fc");
    }
}
