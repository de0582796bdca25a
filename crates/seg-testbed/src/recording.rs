//! A bounded record of the requests a stand-in received, for tests to look at.
//!
//! The stand-ins kept every request for as long as they ran: under a benchmark's load the test
//! Exchange grew by ≈ 10 KiB per request (each body still pinned the connection's read buffer it
//! was split from), 6.6 GB in one run of `bench/proxy-throughput.sh`, and spent part of its CPU
//! growing its heap. Now only the most recent requests are kept, up to a number and (for bodies)
//! a number of bytes, and their headers and bodies are copied out of the read buffer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use http::{HeaderMap, HeaderValue, Uri};

/// How many requests a stand-in keeps by default: far more than any test sends; ≈ 30 MB of the
/// benchmarks' small SOAP requests (headers and body ≈ 3 KB each, as kept).
pub const DEFAULT_RECORDED_REQUESTS: usize = 10_000;

/// The bodies kept, in bytes, at most (the newest request is kept whatever its size).
const BODY_BUDGET: usize = 64 * 1024 * 1024;

/// The most recent requests, oldest first, and how many arrived in all. Shared by a stand-in's
/// connections.
#[derive(Debug)]
pub(crate) struct RequestLog<T> {
    capacity: usize,
    received: AtomicU64,
    kept: Mutex<Kept<T>>,
}

/// The kept requests with their bodies' lengths, and the sum of those.
#[derive(Debug)]
struct Kept<T> {
    requests: VecDeque<(T, usize)>,
    bytes: usize,
}

impl<T> RequestLog<T> {
    /// A log keeping at most `capacity` requests (none with 0).
    pub(crate) fn new(capacity: usize) -> Self {
        RequestLog {
            capacity,
            received: AtomicU64::new(0),
            kept: Mutex::new(Kept {
                requests: VecDeque::new(),
                bytes: 0,
            }),
        }
    }

    /// Counts a request and keeps the record `build` makes of it, `body_bytes` long, forgetting
    /// the oldest ones beyond the capacity or the bodies' budget. With a capacity of 0 nothing
    /// is built: a stand-in under a benchmark's load pays for the count alone.
    pub(crate) fn record(&self, body_bytes: usize, build: impl FnOnce() -> T) {
        self.received.fetch_add(1, Ordering::Relaxed);
        if self.capacity == 0 {
            return;
        }
        // Built before taking the lock: other connections record too.
        let request = build();
        let mut kept = self.lock();
        kept.requests.push_back((request, body_bytes));
        kept.bytes += body_bytes;
        while kept.requests.len() > self.capacity
            || (kept.bytes > BODY_BUDGET && kept.requests.len() > 1)
        {
            if let Some((_, bytes)) = kept.requests.pop_front() {
                kept.bytes -= bytes;
            }
        }
    }

    /// `f` of each kept request, oldest first.
    pub(crate) fn map<R>(&self, f: impl FnMut(&T) -> R) -> Vec<R> {
        self.lock()
            .requests
            .iter()
            .map(|(request, _)| request)
            .map(f)
            .collect()
    }

    /// Forgets the kept requests (the count of received ones stays).
    pub(crate) fn clear(&self) {
        let mut kept = self.lock();
        kept.requests.clear();
        kept.bytes = 0;
    }

    /// Requests received since the start, kept or not.
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The kept requests, recovered if a panicking thread poisoned the lock.
    fn lock(&self) -> MutexGuard<'_, Kept<T>> {
        self.kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T: Clone> RequestLog<T> {
    /// A copy of the kept requests, oldest first.
    pub(crate) fn to_vec(&self) -> Vec<T> {
        self.map(T::clone)
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

/// `headers` as `[name, value]` pairs for `GET /testbed/requests` (values decoded lossily).
pub(crate) fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recent_requests_and_counts_all() {
        let log = RequestLog::new(3);
        for n in 0..5 {
            log.record(0, || n);
        }
        assert_eq!(log.to_vec(), vec![2, 3, 4]);
        assert_eq!(log.received(), 5);
        log.clear();
        assert!(log.to_vec().is_empty());
        assert_eq!(log.received(), 5);
    }

    #[test]
    fn forgets_the_oldest_bodies_beyond_the_budget_but_keeps_the_newest() {
        let log = RequestLog::new(100);
        log.record(1024, || "small");
        log.record(BODY_BUDGET / 2, || "half");
        log.record(BODY_BUDGET / 2, || "another half");
        assert_eq!(log.to_vec(), vec!["half", "another half"]);
        log.record(BODY_BUDGET * 2, || "huge");
        assert_eq!(log.to_vec(), vec!["huge"]);
        log.record(10, || "small again");
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
        let log = RequestLog::new(0);
        log.record(10, || -> u32 {
            unreachable!("nothing is built when nothing is kept")
        });
        assert!(log.to_vec().is_empty());
        assert_eq!(log.received(), 1);
    }
}
