//! Arbitrary bytes as a request head: `request::parse`, then `route`, then the routing
//! invariant of `tests/support/route_invariant.rs` (the property test checks the same rule).
//! The same bytes are also routed as `<target>\n<Host>` without the parser, so characters
//! httparse refuses still reach the router.
#![no_main]

use std::sync::LazyLock;

use gatecache::config::Config;
use gatecache::http::request::{self, Limits, Request};
use libfuzzer_sys::fuzz_target;

#[path = "../../tests/support/route_invariant.rs"]
mod route_invariant;

static CONFIG: LazyLock<Config> = LazyLock::new(route_invariant::config);
static LIMITS: LazyLock<Limits> = LazyLock::new(Limits::default);

fn holds(req: &Request) {
    if let Err(e) = route_invariant::route_and_check(&CONFIG, req) {
        panic!("routing invariant broken: {e}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((req, _))) = request::parse(data, &LIMITS) {
        holds(&req);
    }
    let text = String::from_utf8_lossy(data);
    let (target, host) = text.split_once('\n').unwrap_or((&text, ""));
    holds(&Request {
        target: target.to_string(),
        host: (!host.is_empty()).then(|| host.to_string()),
        ..Request::default()
    });
});
