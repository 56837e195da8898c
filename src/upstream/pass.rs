//! Pass-through: one upstream exchange relayed to one client and never stored (responses that
//! may not be stored, bodies of unknown length, requests with credentials, unsafe methods).
//! It runs on a fetcher thread and hands the head and the body to the connection through a
//! bounded channel, so a slow client slows the upstream read instead of filling memory.

use std::io::Read;

use tokio::sync::mpsc;

use super::Upstream;
use super::fetch::{map_err, upstream_url, via_chain};
use super::parents::Hop;
use crate::error::{Error, Kind};
use crate::http::request::Method;
use crate::route::Target;

/// What to send upstream.
pub struct PassRequest {
    /// A known method (`Other` is answered 405 before anything is passed).
    pub method: Method,
    /// Where to send it.
    pub target: Target,
    /// End-to-end request headers to forward (Range, conditionals, credentials, ...).
    pub headers: Vec<(String, String)>,
    /// The request body (at most 1 MiB, read before routing).
    pub body: Vec<u8>,
}

/// What comes back, in order: `Head`, then `Data`..., then `End` (or `Failed` at any point).
pub enum PassMsg {
    /// The status and end-to-end headers.
    Head {
        /// The upstream's status.
        status: u16,
        /// End-to-end fields to relay.
        headers: Vec<(String, String)>,
        /// The body length if the upstream gave one.
        len: Option<u64>,
    },
    /// A piece of the body (at most 64 KiB).
    Data(Vec<u8>),
    /// The body is complete.
    End,
    /// The exchange failed (before or during the body).
    Failed(Error),
}

/// Bytes per body message.
const CHUNK: usize = 64 * 1024;

impl Upstream {
    /// Starts a pass-through exchange; the messages arrive on the returned channel.
    pub fn pass(&self, req: PassRequest) -> mpsc::Receiver<PassMsg> {
        let (tx, rx) = mpsc::channel(4);
        self.submit_work(super::Work::Pass(req, tx));
        rx
    }

    pub(super) fn run_pass(&self, req: PassRequest, tx: mpsc::Sender<PassMsg>) {
        // Only a request that never reached anyone may go to the next parent; an unsafe one
        // that a parent received must not be sent twice.
        // (RFC 9110 §9.2.2 would allow PUT and DELETE again too; only safe ones are resent.)
        let resendable = req.method.is_safe();
        let Some(method) = req.method.as_str() else {
            let e = Error::with(Kind::Internal, "no method to pass through");
            let _ = tx.blocking_send(PassMsg::Failed(e));
            return;
        };
        let answer = self.over_hops(&req.target, resendable, |hop| {
            let (url, host) = upstream_url(&req.target, hop)?;
            let mut b = ureq::http::Request::builder()
                .method(method)
                .uri(url)
                .header("Host", host)
                .header("Via", via_chain(&req.target, &self.via));
            for (k, v) in &req.headers {
                b = b.header(k.as_str(), v.as_str());
            }
            // No body, no Content-Length: a GET without one must not claim one (RFC 9110
            // §8.6); a POST without one says 0.
            let resp = if req.body.is_empty() && req.method.is_safe() {
                self.send(b, ())
            } else {
                self.send(b, req.body.as_slice())
            }?;
            let status = resp.status().as_u16();
            if matches!(hop, Hop::Parent(..))
                && status >= 500
                && status != 508
                && resendable
                && !super::fetch::relayed_by_parent(resp.headers())
            {
                // Alive but relaying a failure: ask the next hop (no back-off: it answered).
                return Err(Error::with(
                    Kind::InvalidResponse,
                    format!("upstream status {status}"),
                ));
            }
            Ok(resp)
        });
        match answer {
            Ok((resp, _)) => self.relay(resp, req.method, &tx),
            Err(e) => {
                let _ = tx.blocking_send(PassMsg::Failed(e));
            }
        }
    }

    /// Sends one request built by `b` with `body` (borrowed: a retry on the next hop sends the
    /// same bytes without a copy).
    fn send(
        &self,
        b: ureq::http::request::Builder,
        body: impl ureq::AsSendBody,
    ) -> Result<ureq::http::Response<ureq::Body>, Error> {
        let r = b.body(body).map_err(|e| Error::caused(Kind::Internal, e))?;
        self.agent.run(r).map_err(map_err)
    }

    /// Relays `resp` to `tx`: its status and end-to-end fields, then its body in pieces of at
    /// most 64 KiB (none for a `HEAD`, a 204 or a 304), then the end or the failure.
    pub(super) fn relay(
        &self,
        resp: ureq::http::Response<ureq::Body>,
        method: Method,
        tx: &mpsc::Sender<PassMsg>,
    ) {
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let len = super::fetch::body_length(&parts.headers);
        // RFC 9110 §7.6.1: end-to-end fields only; the framing is ours (RFC 9112 §6).
        let all = super::fetch::lines(&parts.headers);
        let headers = crate::http::fields::end_to_end(
            all.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &["content-length"],
        );
        if tx
            .blocking_send(PassMsg::Head {
                status,
                headers,
                len,
            })
            .is_err()
        {
            return;
        }
        if method == Method::Head || matches!(status, 204 | 304) {
            let _ = tx.blocking_send(PassMsg::End);
            return;
        }
        let mut reader = body.into_reader();
        let mut got = 0u64;
        loop {
            let mut buf = vec![0u8; CHUNK];
            match reader.read(&mut buf) {
                Ok(0) => {
                    let msg = match len {
                        Some(l) if got < l => PassMsg::Failed(Error::with(
                            Kind::InvalidResponse,
                            format!("short body: {got} of {l} bytes"),
                        )),
                        _ => PassMsg::End,
                    };
                    let _ = tx.blocking_send(msg);
                    return;
                }
                Ok(n) => {
                    got += n as u64;
                    buf.truncate(n);
                    self.stats
                        .bytes
                        .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                    if tx.blocking_send(PassMsg::Data(buf)).is_err() {
                        return; // the client went away
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(PassMsg::Failed(Error::caused(Kind::Connect, e)));
                    return;
                }
            }
        }
    }
}
