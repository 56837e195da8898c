//! Serving errors: one type that says what went wrong ([`Kind`]), on which side of the cache
//! ([`Side`]: the client, the upstream, the storage, or the cache itself), with its cause kept
//! as a source; and the one mapping from an error to the status and body a client is sent.

use std::fmt;
use std::sync::Arc;

/// The methods a client may use (the `Allow` of a 405, RFC 9110 §15.5.6).
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

/// Where a failure came from (pingora's `ErrorSource`). Decides who is told and what counts it:
/// only an upstream failure backs a parent off or lets a stale object stand in
/// (RFC 5861 `stale-if-error`, RFC 9111 §4.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client's request (a 4xx of our own).
    Downstream,
    /// The origin or a parent: could not be reached, answered late, or answered wrong.
    Upstream,
    /// The cache's own storage (a drive full of pinned slots, an I/O error).
    Storage,
    /// A bug or a state the cache cannot go on from.
    Internal,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The client's request cannot be served: a 4xx with this status and reason (a refused
    /// origin or port, a malformed head).
    Refused {
        /// The 4xx status.
        status: u16,
        /// The one-line body.
        reason: String,
    },
    /// No connection to the upstream, or it broke (502).
    Connect,
    /// The upstream did not answer in time (504).
    Timeout,
    /// The upstream answered something we will not store or serve (502).
    InvalidResponse,
    /// A redirect (3xx): never followed upstream, since its `Location` could name any address
    /// (502 until redirects are relayed).
    Redirect(u16),
    /// A final answer that is not content (404, 410, 403, ...): relayed as is, never stored;
    /// `body` holds at most the first 64 KiB.
    Status {
        /// The upstream's status.
        status: u16,
        /// The start of the upstream's body (at most 64 KiB).
        body: Vec<u8>,
    },
    /// The range starts past the end of the object; the total length if known (416).
    Unsatisfiable(Option<u64>),
    /// A block's fill failed (upstream error, short body) after the retries (502).
    FillAborted,
    /// A block being filled made no progress for too long (504).
    FillStalled,
    /// The object was replaced by another version during the request (502; a retry is served).
    Changed,
    /// The storage refused: no slot could be had, a write or read failed (502).
    Storage,
    /// The cache could not do what it should have been able to (500): a bug.
    Internal,
}

/// A serving error: its kind, and what caused it (a library's error, or a message).
#[derive(Debug, Clone)]
pub struct Error {
    /// What went wrong; it decides the side and the client's status.
    pub kind: Kind,
    cause: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

/// A cause given as text.
#[derive(Debug)]
struct Message(String);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

impl PartialEq for Error {
    /// Errors compare by kind (causes are for people).
    fn eq(&self, other: &Error) -> bool {
        self.kind == other.kind
    }
}

impl Error {
    /// An error of `kind` with no further cause.
    pub fn new(kind: Kind) -> Error {
        Error { kind, cause: None }
    }

    /// An error of `kind` caused by `cause`.
    pub fn caused(kind: Kind, cause: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error {
            kind,
            cause: Some(Arc::new(cause)),
        }
    }

    /// An error of `kind` whose cause is told in `text`.
    pub fn with(kind: Kind, text: impl Into<String>) -> Error {
        Error::caused(kind, Message(text.into()))
    }

    /// Which side failed.
    pub fn side(&self) -> Side {
        match self.kind {
            Kind::Refused { .. } => Side::Downstream,
            Kind::Storage => Side::Storage,
            Kind::Internal => Side::Internal,
            Kind::Connect
            | Kind::Timeout
            | Kind::InvalidResponse
            | Kind::Redirect(_)
            | Kind::Status { .. }
            | Kind::Unsatisfiable(_)
            | Kind::FillAborted
            | Kind::FillStalled
            | Kind::Changed => Side::Upstream,
        }
    }

    /// The status a client that has not been sent a head yet gets (RFC 9110 §15).
    pub fn status(&self) -> u16 {
        match &self.kind {
            Kind::Refused { status, .. } | Kind::Status { status, .. } => *status,
            Kind::Timeout | Kind::FillStalled => 504,
            Kind::Internal => 500,
            Kind::Unsatisfiable(_) => 416,
            Kind::Connect
            | Kind::InvalidResponse
            | Kind::Redirect(_)
            | Kind::FillAborted
            | Kind::Changed
            | Kind::Storage => 502,
        }
    }

    /// Does this failure say the hop is unwell (so another parent should be asked), rather
    /// than give the origin's own answer?
    pub fn is_hop_failure(&self) -> bool {
        matches!(
            self.kind,
            Kind::Connect | Kind::Timeout | Kind::InvalidResponse
        )
    }

    /// Could the upstream not be reached at all (no connection, or no answer in time)?
    pub fn is_unreachable(&self) -> bool {
        matches!(self.kind, Kind::Connect | Kind::Timeout)
    }

    /// The one-line body a client gets (without its newline), naming the side and the cause.
    pub fn message(&self) -> String {
        let what = match &self.kind {
            Kind::Refused { reason, .. } => return reason.clone(),
            Kind::Status { status, body } => {
                // The upstream's own first line, if it said one.
                let text = String::from_utf8_lossy(body);
                let line = text.lines().next().unwrap_or("").trim();
                return if line.is_empty() {
                    format!("upstream answered {status}")
                } else {
                    line.to_string()
                };
            }
            Kind::Connect => "upstream connection failed",
            Kind::Timeout => "upstream timed out",
            Kind::InvalidResponse => "upstream response refused",
            Kind::Redirect(s) => {
                return format!("upstream redirected ({s}); redirects are not followed");
            }
            Kind::Unsatisfiable(_) => "range not satisfiable",
            Kind::FillAborted => "upstream fetch failed",
            Kind::FillStalled => "upstream stalled",
            Kind::Changed => "object changed during the request; retry",
            Kind::Storage => "cache storage error",
            Kind::Internal => "internal error",
        };
        match &self.cause {
            Some(c) => format!("{what}: {c}"),
            None => what.to_string(),
        }
    }

    /// The extra header fields of the answer: `Content-Range: bytes */<len>` with a 416
    /// (RFC 9110 §15.5.17), `Allow` with a 405 (RFC 9110 §15.5.6).
    pub fn reply_headers(&self) -> Vec<(&'static str, String)> {
        match self.kind {
            Kind::Unsatisfiable(Some(total)) => vec![("Content-Range", format!("bytes */{total}"))],
            Kind::Refused { status: 405, .. } => vec![("Allow", ALLOWED_METHODS.to_string())],
            _ => Vec::new(),
        }
    }

    /// Must the connection close after this answer? After a malformed request (400), a method
    /// we do not know how to frame (405), or a loop (508), what follows cannot be trusted.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self.kind,
            Kind::Refused {
                status: 400 | 405 | 508,
                ..
            }
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_one_side_status_and_message() {
        let refused = Kind::Refused {
            status: 403,
            reason: "origin not allowed: evil.test".into(),
        };
        for (kind, side, status, msg) in [
            (
                refused,
                Side::Downstream,
                403,
                "origin not allowed: evil.test",
            ),
            (
                Kind::Connect,
                Side::Upstream,
                502,
                "upstream connection failed",
            ),
            (Kind::Timeout, Side::Upstream, 504, "upstream timed out"),
            (
                Kind::InvalidResponse,
                Side::Upstream,
                502,
                "upstream response refused",
            ),
            (
                Kind::Redirect(302),
                Side::Upstream,
                502,
                "upstream redirected (302); redirects are not followed",
            ),
            (
                Kind::Status {
                    status: 404,
                    body: b"no such file\nmore".to_vec(),
                },
                Side::Upstream,
                404,
                "no such file",
            ),
            (
                Kind::Unsatisfiable(Some(5)),
                Side::Upstream,
                416,
                "range not satisfiable",
            ),
            (
                Kind::FillAborted,
                Side::Upstream,
                502,
                "upstream fetch failed",
            ),
            (Kind::FillStalled, Side::Upstream, 504, "upstream stalled"),
            (Kind::Storage, Side::Storage, 502, "cache storage error"),
            (Kind::Internal, Side::Internal, 500, "internal error"),
        ] {
            let e = Error::new(kind);
            assert_eq!(
                (e.side(), e.status(), e.message().as_str()),
                (side, status, msg)
            );
        }
    }

    #[test]
    fn a_storage_failure_is_not_an_upstream_one() {
        let e = Error::with(Kind::Storage, "no slot can be freed");
        assert_eq!(e.message(), "cache storage error: no slot can be freed");
        assert!(!e.is_hop_failure() && !e.is_unreachable());
        assert_eq!(e.side(), Side::Storage);
        assert_eq!(
            std::error::Error::source(&e).map(|s| s.to_string()),
            Some("no slot can be freed".into())
        );
        assert_eq!(
            Error::new(Kind::Unsatisfiable(Some(7))).reply_headers(),
            [("Content-Range", "bytes */7".to_string())]
        );
    }
}
