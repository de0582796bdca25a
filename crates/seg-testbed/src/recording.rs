//! A bounded record of the requests a stand-in received, for tests to look at.
//!
//! The stand-ins kept every request for as long as they ran: under a benchmark's load the test
//! Exchange grew by ≈ 10 KiB per request (each body still pinned the connection's read buffer it
//! was split from), 6.6 GB in one run of `bench/proxy-throughput.sh`, and spent part of its CPU
//! growing its heap. Now only the most recent requests are kept, up to a number and (for bodies)
//! a number of bytes, and their headers and bodies are copied out of the read buffer.

use std::collections::VecDeque;

use http::{HeaderMap, HeaderValue, Uri};

/// How many requests a stand-in keeps by default: far more than any test sends; ≈ 30 MB of the
/// benchmarks' small SOAP requests (headers and body ≈ 3 KB each, as kept).
pub const DEFAULT_RECORDED_REQUESTS: usize = 10_000;

/// The bodies kept, in bytes, at most (the newest request is kept whatever its size).
const BODY_BUDGET: usize = 64 * 1024 * 1024;

/// The most recent requests, oldest first, and how many arrived in all.
#[derive(Debug)]
pub(crate) struct RequestLog<T> {
    kept: VecDeque<(T, usize)>,
    kept_bytes: usize,
    capacity: usize,
    received: u64,
}

impl<T: Clone> RequestLog<T> {
    /// A log keeping at most `capacity` requests (none with 0).
    pub(crate) fn new(capacity: usize) -> Self {
        RequestLog {
            kept: VecDeque::new(),
            kept_bytes: 0,
            capacity,
            received: 0,
        }
    }

    /// Counts a request and keeps it, `body_bytes` long, forgetting the oldest ones beyond the
    /// capacity or the bodies' budget.
    pub(crate) fn push(&mut self, request: T, body_bytes: usize) {
        self.received += 1;
        if self.capacity == 0 {
            return;
        }
        self.kept.push_back((request, body_bytes));
        self.kept_bytes += body_bytes;
        while self.kept.len() > self.capacity
            || (self.kept_bytes > BODY_BUDGET && self.kept.len() > 1)
        {
            if let Some((_, bytes)) = self.kept.pop_front() {
                self.kept_bytes -= bytes;
            }
        }
    }

    /// The kept requests, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.kept.iter().map(|(request, _)| request)
    }

    /// A copy of the kept requests, oldest first.
    pub(crate) fn to_vec(&self) -> Vec<T> {
        self.iter().cloned().collect()
    }

    /// Forgets the kept requests (the count of received ones stays).
    pub(crate) fn clear(&mut self) {
        self.kept.clear();
        self.kept_bytes = 0;
    }

    /// Requests received since the start, kept or not.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }
}

/// The path and query of `uri` as a stand-in records it (`/` when it has none).
pub(crate) fn path_and_query(uri: &Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| "/".into(), |pq| pq.as_str().to_string())
}

/// A copy of `headers` that holds its values on its own: the values hyper parsed share the
/// connection's read buffer (8 KiB or more), which a kept clone of the map would hold.
pub(crate) fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let mut owned = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut copy = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        owned.append(name.clone(), copy);
    }
    owned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_requests_and_counts_all() {
        let mut log = RequestLog::new(3);
        for n in 0..5 {
            log.push(n, 0);
        }
        assert_eq!(log.to_vec(), vec![2, 3, 4]);
        assert_eq!(log.received(), 5);
        log.clear();
        assert!(log.to_vec().is_empty());
        assert_eq!(log.received(), 5);
    }

    #[test]
    fn forgets_the_oldest_bodies_beyond_the_budget_but_keeps_the_newest() {
        let mut log = RequestLog::new(100);
        log.push("small", 1024);
        log.push("half", BODY_BUDGET / 2);
        log.push("another half", BODY_BUDGET / 2);
        assert_eq!(log.to_vec(), vec!["half", "another half"]);
        log.push("huge", BODY_BUDGET * 2);
        assert_eq!(log.to_vec(), vec!["huge"]);
        log.push("small again", 10);
        assert_eq!(log.to_vec(), vec!["small again"]);
        assert_eq!(log.received(), 5);
    }

    #[test]
    fn owned_headers_keep_every_value_in_order() {
        let mut headers = HeaderMap::new();
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        headers.insert("x-b", HeaderValue::from_static("3"));
        assert_eq!(owned_headers(&headers), headers);
    }

    #[test]
    fn a_capacity_of_zero_keeps_nothing_but_counts() {
        let mut log = RequestLog::new(0);
        log.push(1, 10);
        assert!(log.to_vec().is_empty());
        assert_eq!(log.received(), 1);
    }
}
