//! The process's own gauges on `/metrics`, read on each scrape: how much memory it holds and
//! how much of that its heap really uses, its open descriptors and its threads. They tell a
//! leak (heap in use growing) from an allocator keeping freed memory for reuse (resident
//! memory above the heap in use, steady); the soak run (`bench/soak.sh`) samples them.
//!
//! | metric | meaning |
//! |---|---|
//! | `process_resident_memory_bytes` | resident memory (`VmRSS` of `/proc/self/status`) |
//! | `process_open_fds` | open file descriptors (entries of `/proc/self/fd`) |
//! | `process_threads` | threads (`Threads` of `/proc/self/status`) |
//! | `seg_heap_allocated_bytes` | bytes of heap the program holds now (jemalloc's `stats.allocated`) |
//! | `seg_heap_resident_bytes` | resident memory of the allocator: in use, kept for reuse, and its own (jemalloc's `stats.resident`) |
//!
//! The first three are read from `/proc` (Linux; left out elsewhere). The heap gauges need the
//! `jemalloc` feature (on by default), which also makes jemalloc the `seg-proxy` binary's
//! allocator; they are left out without it, and mean nothing in a program that links this
//! library with the feature but keeps another allocator.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads the gauges of the [module docs](self) on each scrape; register it with
/// [`Registry::register_collector`](prometheus_client::registry::Registry::register_collector).
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl ProcessCollector {
    /// A collector of this process's gauges.
    pub fn new() -> Self {
        ProcessCollector
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: Option<u64>,
) -> Result<(), std::fmt::Error> {
    let Some(value) = value else {
        return Ok(());
    };
    let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
    gauge.encode(metric)
}

/// A `Name:   value [kB]` line of `/proc/self/status`, in bytes when given in kB.
fn status_field(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find_map(|line| line.strip_prefix(name))?;
    let mut words = line.trim_start_matches(':').split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    Some(match words.next() {
        Some("kB") => value * 1024,
        _ => value,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            status_field(&status, "VmRSS"),
        )?;
        gauge(
            &mut encoder,
            "process_threads",
            "Number of OS threads in the process",
            status_field(&status, "Threads"),
        )?;
        let fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64);
        gauge(
            &mut encoder,
            "process_open_fds",
            "Number of open file descriptors",
            fds,
        )?;
        #[cfg(feature = "jemalloc")]
        {
            // The statistics are a snapshot taken at the last epoch: advance it first.
            let heap = tikv_jemalloc_ctl::epoch::advance().ok().and_then(|_| {
                Some((
                    tikv_jemalloc_ctl::stats::allocated::read().ok()?,
                    tikv_jemalloc_ctl::stats::resident::read().ok()?,
                ))
            });
            gauge(
                &mut encoder,
                "seg_heap_allocated_bytes",
                "Bytes of heap the program holds now",
                heap.map(|(allocated, _)| allocated as u64),
            )?;
            gauge(
                &mut encoder,
                "seg_heap_resident_bytes",
                "Resident bytes of the allocator: in use, kept for reuse, and its own",
                heap.map(|(_, resident)| resident as u64),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_bytes_or_as_counts() {
        let status = "Name:\tseg-proxy\nVmRSS:\t   22648 kB\nThreads:\t16\n";
        assert_eq!(status_field(status, "VmRSS"), Some(22648 * 1024));
        assert_eq!(status_field(status, "Threads"), Some(16));
        assert_eq!(status_field(status, "VmSwap"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_scrape_shows_this_processs_memory_descriptors_and_threads() {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(ProcessCollector::new()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let value = |name: &str| -> u64 {
            text.lines()
                .find_map(|line| line.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} in {text}"))
                .parse()
                .unwrap()
        };
        assert!(value("process_resident_memory_bytes") > 1024 * 1024);
        assert!(value("process_threads") >= 1);
        assert!(value("process_open_fds") >= 3, "stdin, stdout, stderr");
    }
}
